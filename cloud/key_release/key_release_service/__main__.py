"""``python -m key_release_service serve ...`` (same as ``edb keyrelease serve``)."""

from key_release_service.cli import keyrelease

if __name__ == "__main__":
    keyrelease()
