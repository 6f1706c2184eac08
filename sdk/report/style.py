"""The page's own CSS and script: everything a report needs to look right and sort its tables offline.

Why inline: reports are attached to CI runs and mailed around; the page fetches nothing (its
Content-Security-Policy forbids it), and the script marks the page once every image decoded.
"""

CSS = """
:root{--fg:#1d232b;--muted:#66707c;--line:#dde2e8;--bg:#fff;--accent:#3b6fb6;--bad:#b3261e;--ok:#2e7d4f}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);background:var(--bg);margin:0}
header{padding:16px 28px;border-bottom:1px solid var(--line);background:#f7f9fb}h1{margin:0 0 4px;font-size:22px}
nav ul{list-style:none;padding:0;margin:8px 0 0;display:flex;flex-wrap:wrap;gap:6px 14px}nav a{color:var(--accent);text-decoration:none}
main{padding:8px 28px 40px;max-width:1500px}section{border-bottom:1px solid var(--line);padding:8px 0 18px}
h2{font-size:19px;margin:18px 0 8px}h3{font-size:16px;margin:16px 0 6px}h4{font-size:14px;margin:12px 0 4px}
.muted{color:var(--muted)}.small{font-size:12px;margin:2px 0}.error{color:var(--bad);background:#fdf0ef;padding:6px 10px;border-radius:4px}
.ok{color:var(--ok);font-weight:600}.bad{color:var(--bad);font-weight:600}.missing{color:var(--muted);font-style:italic;font-size:12px}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle}
table.kv th{color:var(--muted);font-weight:500;padding-right:16px}td.num{text-align:right;font-variant-numeric:tabular-nums}
.table-wrap{overflow-x:auto}table.data thead th{background:#f1f4f7}table.compact td,table.compact th{padding:2px 6px}
table.sortable th{cursor:pointer;user-select:none}table.sortable th[aria-sort=ascending]::after{content:" ▲"}table.sortable th[aria-sort=descending]::after{content:" ▼"}
.figures{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}figure.fig{margin:4px 0}figcaption{font-size:12px;color:var(--muted);max-width:420px}
img{image-rendering:pixelated;max-width:100%}img.thumb{width:80px;height:80px;object-fit:contain;background:#eee}img.sheet{max-width:900px;width:auto}
img.figure{max-width:620px}img.wide{max-width:100%}img.broken{outline:3px solid var(--bad)}details.more{margin:8px 0}summary{cursor:pointer;color:var(--accent)}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:420px;font-size:12px}
svg.chart{background:#fff;border:1px solid var(--line);border-radius:4px}.chart-title{font:600 12px system-ui,sans-serif}
svg.chart text{stroke:none}.chart-label{font:11px system-ui,sans-serif;fill:#444}.chart-tick{font:10px system-ui,sans-serif;fill:#444}
line.axis{stroke:#888}line.gridline{stroke:#e6e6e6}.pill{display:inline-block;padding:0 6px;border-radius:8px;font-size:12px;background:#eef2f7}
th.explained{text-decoration:underline dotted;cursor:help}dl.legend{font-size:12px;color:var(--muted);margin:4px 0 10px;max-width:980px;display:grid;grid-template-columns:max-content 1fr;gap:2px 12px}
dl.legend dt{font-weight:600;color:var(--fg)}dl.legend dd{margin:0}
ul.verdicts{list-style:none;padding:0;margin:6px 0}li.verdict{padding:5px 10px;margin:4px 0;border-left:4px solid var(--ok);background:#f3f8f5;font-size:15px}
li.verdict.note{border-color:#c9a227;background:#fbf8ec}li.verdict.bad{border-color:var(--bad);background:#fdf0ef}li.verdict.ok,li.verdict.bad{color:var(--fg);font-weight:400}li.verdict .mark{font-weight:700}
.warn{background:#fff6dd;border-left:4px solid #c9a227;padding:6px 10px;border-radius:4px}.no-plot{color:var(--muted);font-style:italic;margin:6px 0}
p.verdict-line{font-weight:500;margin:4px 0}code{background:#f1f4f7;padding:0 3px;border-radius:3px;font-size:12px}
.sheet-wrap{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.sheet-grid{display:flex;flex-wrap:wrap;gap:10px;flex:1 1 600px}
figure.cell{margin:0;padding:6px;border:1px solid var(--line);border-radius:4px;background:#fafbfc}figure.cell .panels{display:flex;gap:4px}
.panel{display:flex;flex-direction:column;align-items:center}.panel-label{font-size:10px;color:var(--muted)}
img.px{width:var(--px);height:var(--px);object-fit:contain;image-rendering:pixelated;background:#222}
figure.cell figcaption{font-size:12px;color:var(--fg);max-width:calc(3 * var(--px) + 8px);margin-top:3px;line-height:1.3}
figure.legend-wheel{margin:0}figure.legend-wheel figcaption{max-width:230px}
.gate-banner{padding:14px 18px;border-radius:6px;font-size:18px;margin:12px 0}.gate-banner.pass{background:#e7f4ec;border:2px solid var(--ok)}
.gate-banner.fail{background:#fdf0ef;border:2px solid var(--bad)}.gate-banner.warn{background:#fff6dd;border:2px solid #c9a227}
.gate-banner strong{font-size:22px}.models{display:flex;flex-wrap:wrap;gap:16px}.models>div{border:1px solid var(--line);border-radius:6px;padding:8px 12px;flex:1 1 420px;min-width:0}.models td{word-break:break-all}
.models h3{margin:2px 0 6px}td.status-pass{color:var(--ok);font-weight:700}td.status-fail,td.status-error{color:var(--bad);font-weight:700}
td.status-warn{color:#9a7a00;font-weight:700}td.status-skip{color:var(--muted)}pre.policy{max-height:none;margin:0;font-size:11px;white-space:pre-wrap}
@media print{header nav{display:none}main{max-width:none;padding:0 8mm}.table-wrap{overflow:visible}table{page-break-inside:auto}tr{page-break-inside:avoid}
details.more>summary{display:none}details.more{display:block}img.thumb{width:48px;height:48px}section{page-break-before:auto}body{font-size:11px}}
"""

# Scoped to the result's <div>: a notebook page has its own styles, which this must not touch.
NOTEBOOK_CSS = (
    ".kernelscope-result ul.verdicts{list-style:none;padding:0}"
    ".kernelscope-result li.verdict{padding:4px 8px;margin:3px 0;border-left:4px solid #2e7d4f}"
    ".kernelscope-result li.verdict.note{border-color:#c9a227}.kernelscope-result li.verdict.bad{border-color:#b3261e}"
    ".kernelscope-result .warn{border-left:4px solid #c9a227;padding:4px 8px}.kernelscope-result .bad,.kernelscope-result .error{color:#b3261e}"
    ".kernelscope-result .ok{color:#2e7d4f}.kernelscope-result td.num{text-align:right}.kernelscope-result .muted{opacity:.7}"
)

JS = r"""
(function(){
  function key(td){var s=td.getAttribute('data-sort');if(s!==null&&s!==''){var n=parseFloat(s);if(!isNaN(n))return [0,n];}
    if(s==='')return [2,0];return [1,td.textContent.trim().toLowerCase()];}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('thead th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var asc=th.getAttribute('aria-sort')!=='ascending';
        table.querySelectorAll('thead th').forEach(function(o){o.removeAttribute('aria-sort');});
        th.setAttribute('aria-sort',asc?'ascending':'descending');
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
          if(x[0]!==y[0])return x[0]-y[0];if(x[1]<y[1])return asc?-1:1;if(x[1]>y[1])return asc?1:-1;return 0;});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  function check(){
    var imgs=Array.prototype.slice.call(document.images);
    var broken=imgs.filter(function(i){return !i.complete||i.naturalWidth===0;});
    broken.forEach(function(i){i.classList.add('broken');});
    document.body.setAttribute('data-images',String(imgs.length));
    document.body.setAttribute('data-broken-images',String(broken.length));
    document.body.setAttribute('data-broken-list',broken.map(function(i){return i.getAttribute('title')||i.alt;}).join('|'));
    document.body.setAttribute('data-images-checked','true');
  }
  window.addEventListener('beforeprint',function(){document.querySelectorAll('details').forEach(function(d){d.open=true;});});
  if(document.readyState==='complete'){check();}else{window.addEventListener('load',check);}
})();
"""
