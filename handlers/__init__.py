"""Codecs and protocol handlers built on the reactor core (they import reactor; reactor never imports them)."""
