"""app: the Streamlit review app over the workspace (issue #6; not implemented yet)."""
