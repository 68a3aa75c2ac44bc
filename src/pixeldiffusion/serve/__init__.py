"""A local web page to generate with a trained model and watch the denoising live: `pixeldiffusion serve`."""

from pixeldiffusion.serve.server import make_server, serve

__all__ = ["make_server", "serve"]
