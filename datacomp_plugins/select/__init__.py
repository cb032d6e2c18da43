"""Selection: masks over scores, streaming top-k, uid-set algebra, subset comparison."""
