"""Infrastructure every stage uses: project paths and caches, atomic files and hashing."""
