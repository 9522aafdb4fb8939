"""The Ray Serve application (HTTP query API). Built in a later issue."""
