"""Releases and how they reach devices: making a signed release (release.py), what the
controller trusts (trust.py), rolling it out with Ansible (deploy.py), and carrying it
into a closed site as one file (bundle.py)."""
