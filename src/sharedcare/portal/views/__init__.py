"""Portal pages, one module per group of pages."""
