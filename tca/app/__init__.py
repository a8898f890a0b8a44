"""The explorer app's side of the package (what ``app.py`` wires to Gradio): the one request a
visitor's inputs become, the Runs, sweep and comparison made from it, the page built from a Run,
the downloads, the model server and the upload rules. The core (``tca`` outside this package)
never imports it.
"""
