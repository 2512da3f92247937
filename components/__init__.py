"""Figure builders and small Streamlit helpers shared by the dashboard pages.

Figure builders (``map``, ``histogram``) take frames and options and return plotly figures,
so they are testable without a browser; ``state`` holds the session and caching helpers every
page uses (the current workspace, cached loads keyed by file fingerprints, step progress).
"""
