"""Building what students and Gradescope get: the release, the autograder bundle, the manifest, the markers."""
