"""The report stage: an analysis and a variant -> one self-contained HTML page (docs/report.md).

    build.py    what the report says (`Report` and its parts), from the pipeline's results
    html.py     how it looks: the page, its tables and styles
    figures.py  the Plotly figures the app and the report share
"""
