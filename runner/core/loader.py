"""Loading manifest files: YAML text in, validated manifests or located errors out.

YAML is composed (``yaml.SafeLoader``) into nodes that keep their line and column, then
built into plain values here, with caps on size (before parsing), depth (while composing:
PyYAML's composer recurses, so a deep file must be refused before it does) and node count
(while building: aliases can multiply nodes). Every pydantic error is mapped back to its
node, so messages read ``file:line:col: field: problem``. A file that cannot be read or holds
no manifest is an error located at the file, like any invalid file, so callers (the daemon)
can tell "invalid" from "deleted". Reading a file is the only I/O. Called by validate, plan,
apply and the daemon.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import BaseModel, ValidationError

from runner.core import template
from runner.core.manifest import RESERVED_COLUMNS, Manifest
from runner.core.paths import PathError, confine, hidden_or_temp
from runner.errors import Location, ManifestError, ManifestErrors

MAX_MANIFEST_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64
ENVELOPE_KEYS = ("apiVersion", "kind", "metadata", "spec")
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class LoadedManifest:
    manifest: Manifest
    path: Path
    root: Path
    document: int
    line: int
    digest: str
    short_form: bool = False
    nodes: Any = field(default=None, repr=False, compare=False)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def locate(self, *field_path: str | int) -> Location:
        """Where a field is written (its nearest existing parent when it is not)."""
        parts = list(field_path)
        if self.short_form and parts[:1] == ["spec"]:
            parts = parts[1:]
        node = _find(self.nodes, parts)
        if node is None:
            return Location(self.path, self.line, 1)
        return Location(self.path, node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    """Plain Python values from YAML nodes, counting every node built (aliases included)."""

    def __init__(self) -> None:
        self.count = 0
        self._scalars = yaml.SafeLoader("")  # resolves tagged scalars: ints, bools, dates

    def build(self, node: yaml.Node, depth: int = 0) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} YAML nodes (alias bomb?)", node.start_mark)
        if depth > MAX_DEPTH:  # aliases can nest a tree the composer saw as shallow
            raise _Refused(_TOO_DEEP, node.start_mark)
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            first_line: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = self.build(key_node, depth + 1)
                if not isinstance(key, str | int | float | bool) and key is not None:
                    raise _Refused("mapping keys must be plain scalars", key_node.start_mark)
                if key in result:  # YAML forbids it; a silent "last one wins" hides mistakes
                    raise _Refused(
                        f"duplicate key {key!r} (first at line {first_line[key]})",
                        key_node.start_mark,
                    )
                first_line[key] = key_node.start_mark.line + 1
                result[key] = self.build(value_node, depth + 1)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, depth + 1) for item in node.value]
        return self._scalars.construct_object(node)


class _Refused(Exception):
    """A document refused while composing or building (too big, too deep, duplicate keys)."""

    def __init__(self, message: str, mark: yaml.Mark) -> None:
        super().__init__(message)
        self.mark = mark

    def location(self, path: Path) -> Location:
        return Location(path, self.mark.line + 1, self.mark.column + 1)


_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer counts nesting and stops before it recurses too deep."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:  # the document's own node is depth 1
                raise _Refused(_TOO_DEEP, self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _find(node: Any, parts: Sequence[str | int]) -> yaml.Node | None:
    """The node at ``parts`` below ``node``, or the deepest existing ancestor."""
    current = node
    for part in parts:
        child = None
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    child = value_node
                    break
        elif (
            isinstance(current, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(current.value)
        ):
            child = current.value[part]
        if child is None:
            return current
        current = child
    return current


def _key_node(node: Any, parts: Sequence[str | int]) -> yaml.Node | None:
    """The key node of the last part (for unknown fields: point at the key itself)."""
    parent = _find(node, parts[:-1])
    if isinstance(parent, yaml.MappingNode):
        for key_node, _value in parent.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(parts[-1]):
                return key_node
    return None


def load_text(text: str, *, path: Path, root: Path) -> list[LoadedManifest]:
    """Every manifest in ``text``; raises ManifestErrors listing every problem, located."""
    errors: list[ManifestError] = []
    manifests: list[LoadedManifest] = []
    if not text.strip():
        raise ManifestErrors([_empty(path)])
    try:
        documents = list(yaml.compose_all(text, Loader=_Loader))
    except _Refused as exc:
        raise ManifestErrors([ManifestError(str(exc), location=exc.location(path))]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(path, mark.line + 1, mark.column + 1) if mark else Location(path)
        raise ManifestErrors(
            [ManifestError(f"invalid YAML: {exc.problem or exc}", location=where)]
        ) from None
    except yaml.YAMLError as exc:
        error = ManifestError(f"invalid YAML: {exc}", location=Location(path))
        raise ManifestErrors([error]) from None
    documents = [d for d in documents if not _blank(d)]
    if not documents:
        raise ManifestErrors([_empty(path)])
    unnamed = sum(
        1 for d in documents if isinstance(d, yaml.MappingNode) and _short_without_name(d)
    )
    unnamed_seen = 0
    for index, node in enumerate(documents):
        start = Location(path, node.start_mark.line + 1, node.start_mark.column + 1)
        if not isinstance(node, yaml.MappingNode):
            errors.append(ManifestError("a manifest must be a mapping", location=start))
            continue
        try:
            value = _Builder().build(node)
        except _Refused as exc:
            errors.append(ManifestError(str(exc), location=exc.location(path)))
            continue
        except yaml.YAMLError as exc:
            errors.append(ManifestError(f"invalid YAML value: {exc}", location=start))
            continue
        short = not any(key in value for key in ENVELOPE_KEYS)
        if short:
            suffix = ""
            if "name" not in value:
                unnamed_seen += 1
                suffix = f"-{unnamed_seen}" if unnamed > 1 and unnamed_seen > 1 else ""
            value = _envelope(value, default_name=_stem_name(path) + suffix)
        found, problems = _validate(value, node=node, short=short, path=path, root=root)
        errors.extend(problems)
        if found is not None and not problems:
            manifests.append(
                LoadedManifest(
                    manifest=found,
                    path=path,
                    root=root,
                    document=index,
                    line=start.line,
                    digest=digest(found),
                    short_form=short,
                    nodes=node,
                )
            )
    if errors:
        raise ManifestErrors(sorted(errors, key=_position))
    return manifests


def _blank(node: yaml.Node | None) -> bool:
    """No document, or an empty one (a lone or trailing ``---``)."""
    return node is None or (
        isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG and node.value == ""
    )


_NULL_TAG = "tag:yaml.org,2002:null"


def _empty(path: Path) -> ManifestError:
    """An emptied file is a broken manifest, not a removed one: its last good version stays."""
    return ManifestError(
        "empty manifest: the file holds no YAML document (delete the file to remove its manifests)",
        location=Location(path),
    )


def _short_without_name(node: yaml.MappingNode) -> bool:
    keys = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    return not keys & set(ENVELOPE_KEYS) and "name" not in keys


def _stem_name(path: Path) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-_")
    return (name or "manifest")[:63]


def _envelope(value: dict[str, Any], *, default_name: str) -> dict[str, Any]:
    spec = dict(value)
    metadata = {"name": spec.pop("name", default_name)}
    if "labels" in spec:
        metadata["labels"] = spec.pop("labels")
    return {"apiVersion": "gbatch/v1", "kind": "Batch", "metadata": metadata, "spec": spec}


def digest(manifest: Manifest) -> str:
    """sha256 of the manifest's canonical JSON: same meaning, same digest."""
    canonical = json.dumps(
        manifest.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _user_path(loc: Sequence[str | int], short: bool) -> list[str | int]:
    """A pydantic loc as the user wrote it (short form: no ``spec``; name is top level)."""
    parts = [p for p in loc if not (isinstance(p, str) and "[" in p)]  # drop union tags
    if short:
        if parts[:1] == ["spec"]:
            return parts[1:]
        if parts[:1] == ["metadata"]:
            return parts[1:]
    return parts


def _validate(
    value: dict[str, Any], *, node: yaml.MappingNode, short: bool, path: Path, root: Path
) -> tuple[Manifest | None, list[ManifestError]]:
    problems: list[ManifestError] = []

    def error(message: str, parts: Sequence[str | int], *, at_key: bool = False) -> None:
        target = (_key_node(node, parts) if at_key and parts else None) or _find(node, parts)
        mark = target.start_mark if target is not None else node.start_mark
        problems.append(
            ManifestError(
                message,
                location=Location(path, mark.line + 1, mark.column + 1),
                field=".".join(str(p) for p in parts),
            )
        )

    try:
        manifest = Manifest.model_validate(value)
    except ValidationError as exc:
        for item in exc.errors():
            parts = _user_path(item["loc"], short)
            unknown = item["type"] == "extra_forbidden"
            error(_message(item, parts, value, short), parts, at_key=unknown)
        return None, problems

    spec_parts: list[str | int] = [] if short else ["spec"]
    if manifest.spec.prompt is not None:
        try:
            template.parse(manifest.spec.prompt.template)
        except template.TemplateError as exc:
            error(str(exc), [*spec_parts, "prompt", "template"])
    source = manifest.spec.source
    for field_name in ("path", "requests"):
        relative = getattr(source, field_name)
        if relative is not None:
            prefix = relative.split("*")[0] or "."
            try:
                confine(prefix, base_dir=path.parent, root=root)
            except PathError as exc:
                error(str(exc), [*spec_parts, "source", field_name])
    if manifest.spec.cache is not None:
        if manifest.spec.prompt is None:
            error(
                "a cache needs a prompt template (ready-made requests carry their own context)",
                [*spec_parts, "cache"],
            )
        if not manifest.spec.cache.files and not manifest.spec.cache.text:
            error("the cache holds nothing: give it files or text", [*spec_parts, "cache"])
        for index, name in enumerate(manifest.spec.cache.files):
            try:
                confine(name, base_dir=path.parent, root=root)
            except PathError as exc:
                error(str(exc), [*spec_parts, "cache", "files", index])
    if manifest.spec.output_schema is not None:
        for message in _schema_problems(manifest.spec.output_schema):
            error(message, [*spec_parts, "output_schema"])
    return manifest, problems


def _schema_problems(schema: dict[str, Any]) -> list[str]:
    problems = []
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        problems.append(f"not a valid JSON Schema: {exc.message}")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict) or not properties:
        problems.append("output_schema needs properties (each becomes a column)")
        return problems
    for name in properties:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
            problems.append(f"property {name!r} is not usable as a column name")
        elif name.lower() in RESERVED_COLUMNS:
            problems.append(f"property {name!r} clashes with the result column of that name")
    return problems


def _message(item: Any, parts: Sequence[str | int], value: dict[str, Any], short: bool) -> str:
    kind, message = item["type"], item["msg"]
    if kind == "extra_forbidden":
        known = _known_fields(item["loc"][:-1])
        close = difflib.get_close_matches(str(parts[-1]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown field {parts[-1]!r}{hint}"
    if kind == "missing":
        return "required field missing"
    got = item.get("input")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{message.lower()}, got {got!r}"
    return message.removeprefix("Value error, ")


def _known_fields(loc: Sequence[str | int]) -> list[str]:
    """Field names valid at ``loc`` of the model (for did-you-mean hints)."""
    model: type[BaseModel] = Manifest
    for part in loc:
        if not isinstance(part, str):
            continue
        info = model.model_fields.get(part)
        annotation = info.annotation if info is not None else None
        candidates = getattr(annotation, "__args__", (annotation,))
        nested = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if nested is None:
            return []
        model = nested
    return [info.alias or name for name, info in model.model_fields.items()]


def load_file(path: Path, *, root: Path) -> list[LoadedManifest]:
    """Read and load one manifest file, refusing unreadable, oversized, non-UTF-8 or empty
    files first (each an error located at the file)."""

    def refused(message: str) -> ManifestErrors:
        return ManifestErrors([ManifestError(message, location=Location(path))])

    try:
        # O_NONBLOCK: a FIFO in the manifest's place must not hang the daemon on open
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise refused("not a regular file")
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise refused(f"cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL byte in the name
        raise refused(f"cannot read: {exc}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        size = max(info.st_size, len(data))
        raise refused(f"file is {size} bytes; manifests are capped at {MAX_MANIFEST_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refused(f"not UTF-8 text: {exc.reason}") from None
    return load_text(text, path=path, root=root)


def _present(candidate: Path) -> bool:
    """A file, or something in its place that cannot be read (a dangling link, no access):
    listed, so that loading it reports an error instead of the manifest looking deleted."""
    try:
        return candidate.is_symlink() or not candidate.is_dir()
    except OSError:
        return True


def discover(paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(manifest file, root) pairs: a file is its own; a directory's YAML files, recursively."""
    found: list[tuple[Path, Path]] = []
    for given in paths:
        if given.is_dir():
            root = given.resolve()
            for candidate in sorted(root.rglob("*")):
                relative = candidate.relative_to(root)
                if (
                    candidate.suffix in SUFFIXES
                    and not hidden_or_temp(relative)
                    and _present(candidate)
                ):
                    found.append((candidate, root))
        else:
            resolved = given.resolve()
            found.append((resolved, resolved.parent))
    return found


def load_paths(paths: Sequence[Path]) -> tuple[list[LoadedManifest], list[ManifestError]]:
    """Everything loadable under ``paths``, and every error (a bad file hides no good one)."""
    loaded: list[LoadedManifest] = []
    errors: list[ManifestError] = []
    for path, root in discover(paths):
        try:
            loaded.extend(load_file(path, root=root))
        except ManifestErrors as exc:
            errors.extend(exc.errors)
    names: dict[str, LoadedManifest] = {}
    tables: dict[str, LoadedManifest] = {}
    unique: list[LoadedManifest] = []
    for item in loaded:
        first = names.get(item.manifest.name)
        if first is not None:
            errors.append(
                ManifestError(
                    f"manifest name {item.manifest.name!r} is also used at "
                    f"{first.path}:{first.line}",
                    location=item.locate("metadata", "name"),
                    field="metadata.name",
                )
            )
            continue
        other = tables.get(item.manifest.table)
        if other is not None:
            errors.append(
                ManifestError(
                    f"table {item.manifest.table!r} is also written by {other.manifest.name!r} "
                    f"({other.path}:{other.line})",
                    location=item.locate("spec", "output", "table"),
                    field="output.table",
                )
            )
            continue
        names[item.manifest.name] = item
        tables[item.manifest.table] = item
        unique.append(item)
    return unique, errors


def _position(error: ManifestError) -> tuple[int, int]:
    return (error.location.line, error.location.column) if error.location else (0, 0)
