#!/bin/bash
# Run in the merged tree (old layout), before relayout.py.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$1"
. /work/venv/bin/activate
export PYTHONPATH=$PWD
NLL="NonFiniteError LOGIT_CHUNK final_logits compute_dtype_of _autocast window_nll_sums window_nll_lower_bounds token_nll"
WIN="evaluation_windows spread_order nll_band running_event"
HTML="_CSS _e _table _Page _rho step_text HEADROOM HEATMAP_WIDTH"
python3 $HERE/split.py explorer/evaluate.py explorer/nll.py $HERE/doc_nll.txt $NLL
python3 $HERE/split.py explorer/evaluate.py explorer/windows.py $HERE/doc_windows.txt $WIN
python3 $HERE/split.py explorer/report.py explorer/report_html.py $HERE/doc_html.txt $HTML
# private names that now cross a module boundary become public
for f in explorer/evaluate.py explorer/nll.py explorer/windows.py explorer/report.py explorer/report_html.py; do
  sed -i 's/\b_autocast\b/autocast/g; s/\b_Page\b/Page/g; s/\b_e(/escape(/g; s/\b_table(/html_table(/g; s/\b_CSS\b/CSS/g; s/\b_rho(/rho_text(/g; s/def _e(/def escape(/; s/def _table(/def html_table(/; s/def _rho(/def rho_text(/' $f
done
python $HERE/prune_imports.py explorer/evaluate.py explorer/nll.py explorer/windows.py explorer/report.py explorer/report_html.py
python $HERE/fix_undefined.py explorer/evaluate.py "nll:$(echo $NLL | sed 's/_autocast/autocast/; s/ /,/g')" "windows:$(echo $WIN | tr ' ' ',')"
python $HERE/fix_undefined.py explorer/windows.py "nll:$(echo $NLL | sed 's/_autocast/autocast/; s/ /,/g')"
python $HERE/fix_undefined.py explorer/report.py "report_html:CSS,escape,html_table,Page,rho_text,step_text,HEADROOM,HEATMAP_WIDTH"
python $HERE/fix_undefined.py explorer/report_html.py --typing "report:Subject,ReportAnalysis,Healing,ReportSizes,Report"
python -m pyflakes explorer/evaluate.py explorer/nll.py explorer/windows.py explorer/report.py explorer/report_html.py | grep -v "redefinition of unused" || true
# the importers of the moved names
python3 - <<'PY'
import json
nll = "NonFiniteError LOGIT_CHUNK final_logits compute_dtype_of window_nll_sums window_nll_lower_bounds token_nll".split()
win = "evaluation_windows spread_order nll_band running_event".split()
conf = {"moves": {}, "splits": {"explorer.evaluate": {**{n: "explorer.nll" for n in nll}, **{n: "explorer.windows" for n in win}},
                                "explorer.report": {"HEATMAP_WIDTH": "explorer.report_html", "step_text": "explorer.report_html", "HEADROOM": "explorer.report_html"}}}
json.dump(conf, open("/tmp/final_splits.json", "w"))
PY
python3 $HERE/relayout.py "$PWD" --conf=/tmp/final_splits.json --only-changed
