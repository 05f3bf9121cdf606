"""The Gradio app (``vision-rs app``): certify images, clips and segmentation masks in the browser.

* :mod:`~vision_rs.app.ui` lays out the page and connects its events (imports gradio);
* :mod:`~vision_rs.app.certify` computes what each tab shows, without gradio;
* :mod:`~vision_rs.app.catalog` says which models the app offers, what they were trained on, and which model each
  method needs;
* :mod:`~vision_rs.app.pictures` draws the inputs, patches, masks and plots (matplotlib figures);
* :mod:`~vision_rs.app.ball` finds one perturbation inside a certified ball, for display;
* :mod:`~vision_rs.app.progress` turns the engine's progress into the page's progress line;
* :mod:`~vision_rs.app.sessions` keeps each open page's runs, so that Cancel and a closed page stop them.

Importing ``vision_rs`` never imports this wing (nor gradio or matplotlib).
"""
