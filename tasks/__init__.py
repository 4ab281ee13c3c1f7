"""pyinfra sub-deploys of the Bismuth toolkit, one per component, composed by deploy.py."""
