"""Inputs: what the user named (files, folders, globs, manifests, URLs) listed into pages, the storage they
live on, and reading one page's pixels."""
