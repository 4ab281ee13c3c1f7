"""bismuth-provider: key/value pairs, blobs and secrets for the code in one container."""
