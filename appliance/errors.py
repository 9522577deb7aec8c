"""Errors every part of the project raises for problems a user can fix."""


class UserFacingError(Exception):
    """A problem the user can fix: the message names it and the fix. Printed without a traceback."""


class BundleError(UserFacingError):
    """A bundle is missing, corrupt, tampered with, or of an unknown format."""
