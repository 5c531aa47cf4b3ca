"""Layer Explorer web app: `python app.py` serves on http://127.0.0.1:7860.

Host and port: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT. Sizes, folders and the default model:
LAYER_EXPLORER_* variables (see explorer/ui/settings.py). On a Hugging Face Space this file is the
`app_file`.
"""

from explorer.ui import launch

if __name__ == "__main__":
    launch()
