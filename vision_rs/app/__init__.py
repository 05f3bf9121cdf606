"""The Gradio app (``vision-rs app``): certify images, clips and segmentation masks in the browser.

* :mod:`~vision_rs.app.ui` lays out the page and connects its events (imports gradio);
* :mod:`~vision_rs.app.certify` computes what each tab shows, without gradio;
* :mod:`~vision_rs.app.catalog` says which models the app offers;
* :mod:`~vision_rs.app.pictures` draws the inputs, patch grids, masks and plots (matplotlib figures).

Importing ``vision_rs`` never imports this wing (nor gradio or matplotlib).
"""
