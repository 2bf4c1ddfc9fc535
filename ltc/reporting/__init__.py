"""Presentation shared by the commands: plots (matplotlib, imported when drawn). No torch."""
