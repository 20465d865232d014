"""The `sdgen` command line. Only this package configures logging and prints."""
