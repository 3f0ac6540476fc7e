"""pytest plugin (issue 6): placeholder, inert until implemented."""
