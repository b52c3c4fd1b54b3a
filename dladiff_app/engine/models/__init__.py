"""Model registry, store, downloads and loaders.

Import the submodules directly (``registry``, ``store``, ``download``, ``extract``, ``loaders``,
``dlib_pack``): only ``loaders`` imports torch, so the others stay cheap for the CLI and GUI.
"""
