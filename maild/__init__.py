"""maild: an email-native support desk."""

__version__ = "0.1.0"
