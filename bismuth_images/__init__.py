"""Container images of the toolkit, built from Debian packages without Docker.

``python3 -m bismuth_images.build`` makes the base image ``bismuth.local/python:3.11`` (Debian's
Python 3 with its standard library) as an OCI image-layout archive; see README.md here.
Modules: :mod:`.oci` (the image documents, pure), :mod:`.archive` (writing and checking
archives), :mod:`.sources` (which apt archive), :mod:`.rootfs` (mmdebstrap), :mod:`.build`
(the command).
"""
