"""Reports of profile runs: the terminal table (rich), Markdown, and one self-contained HTML file."""
