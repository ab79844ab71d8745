"""Sphinx configuration of the course website (`make site`; see tools/build_site.py).

The builder copies this folder, a landing page made from the README and the executed notebooks
into build/site-src/ and runs Sphinx there with warnings as errors. MyST-NB renders each notebook
with its stored outputs (never re-executed); sphinx-book-theme, Jupyter Book 1's theme, adds the
launch buttons. The repository, branch and hub come from the environment the builder sets.
"""

from __future__ import annotations

import os

project = "async-llm-lab"
author = "async-llm-lab contributors"
copyright = "the async-llm-lab contributors"
language = "en"

# githubpages writes .nojekyll, so that GitHub Pages serves the _static/ folders.
extensions = ["myst_nb", "sphinx.ext.githubpages"]
# The committed notebooks are executed by `make notebooks` and checked by nbval: the site shows
# exactly those outputs.
nb_execution_mode = "off"
# A cell tagged raises-exception keeps its traceback on the page, as in the notebook.
nb_output_stderr = "show"
# The lessons' widgets (labsupport.coaching) need a kernel, and the notebooks store no widget
# state: a page shows what each widget output carries beside it instead, the explorer's first
# timeline (a PNG with its alt text) and a prediction's question (its text).
nb_mime_priority_overrides = [("*", "application/vnd.jupyter.widget-view+json", None)]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

repository_url = os.environ["SITE_REPOSITORY_URL"]
branch = os.environ["SITE_BRANCH"]
hub_url = os.environ.get("SITE_HUB_URL", "")

html_theme = "sphinx_book_theme"
html_title = "async-llm-lab"
templates_path = ["_templates"]

html_theme_options = {
    "repository_url": repository_url,
    "repository_branch": branch,
    "path_to_docs": "",
    "use_repository_button": True,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "launch_buttons": {
        "binderhub_url": "https://mybinder.org",
        # The JupyterHub button is an nbgitpuller link, like `labsupport workshop-link`.
        "jupyterhub_url": hub_url,
        "notebook_interface": "jupyterlab",
    },
    "show_toc_level": 2,
}
html_last_updated_fmt = None
html_copy_source = True
html_show_sourcelink = False
# No index page: the lessons define no index entries, so it would be an empty page.
html_use_index = False
