//! dosfs: the dos object store mounted as a filesystem.
