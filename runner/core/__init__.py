"""The pure core: manifest model, templates, planning and pricing. No I/O beyond reading text."""
