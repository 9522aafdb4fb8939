"""Where images come from, in one place: what a SOURCE names (a folder, a glob, Parquet,
WebDataset shards; local or any ``pyarrow.fs`` URI) and the embed job's read stage over it
(:mod:`.items`), and reading one item's bytes back from its location, capped and with the
location's connection options refused (:mod:`.reader`; also used to draw thumbnails)."""
