"""Container images of the toolkit, built from Debian packages without Docker.

``python3 -m images.build`` makes the base image ``bismuth.local/python:3.11`` (Debian's
Python 3 with its standard library) as an OCI image-layout archive; see README.md here.
Modules: :mod:`images.oci` (the image documents, pure), :mod:`images.archive` (writing and
checking archives), :mod:`images.sources` (which apt archive), :mod:`images.rootfs`
(mmdebstrap), :mod:`images.build` (the command).
"""
