"""app: the Streamlit review app over the workspace (runs, data browser, labeling, blind eval review).

``queries`` holds every read and write the pages make; ``render`` shows untrusted text as plain text;
``serve`` starts the server (loopback, or exposed behind a token)."""
