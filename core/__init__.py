"""Cherrypick's scoring engine: plain functions over arrays and data frames.

The Streamlit app and the CLI (`python -m core ...`) are two thin faces of it; nothing in
this package imports Streamlit.
"""

__version__ = "0.1.0"
