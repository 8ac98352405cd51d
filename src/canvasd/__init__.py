"""canvasd: a drop-in OpenAI Images API server with its own embedded diffusion model."""
__version__ = "0.1.0"
