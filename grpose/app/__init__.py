"""The interactive app (`make app`, `grpose-app`): a pose editor in the browser, every trained
model's bundle under a runs folder side by side for one pose and prompt. Standard library only
(`http.server` and one HTML page), so it runs offline on the core install."""
from grpose.app.server import App, serve
from grpose.app.validate import AppError, Limits

__all__ = ["App", "AppError", "Limits", "serve"]
