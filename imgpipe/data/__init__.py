"""Readers: each turns a source (folders, tfds, ...) into a `TaskData` of two `ImageSet`s."""
