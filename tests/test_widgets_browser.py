"""End-to-end test of the dashboards: a real JupyterLab server, a real notebook, a real browser.

The test starts JupyterLab on localhost (a free port, token auth, its own temporary root, config, data, runtime,
settings and workspaces directories, and a kernel spec pointing at this interpreter), copies `widgets_e2e.ipynb`
into its root, opens it in headless Chromium driven by Playwright, runs all cells from the Run menu, waits for every
dashboard's plotly figure to render (the Hessian and landscape ones are filled by background threads), moves a slider
of each dashboard with the keyboard and checks that the plotted SVG changes, clicks the landscape contour and checks
that the 1D slices through the point are drawn, checks that each gap entry of the reliability diagram's legend is drawn in
the colour of its bars, and checks that no cell (nor any dashboard's output area) shows
anything on stderr: errors, tracebacks, warnings. The notebook's first cell asserts that its kernel runs this
interpreter. Screenshots of each dashboard, the browser console and the server log go to `$LOSSVIZ_ARTIFACTS`
(default: pytest's `tmp_path`). The server and its kernel are always shut down (REST shutdown, then SIGTERM/SIGKILL
to the server's process group, then SIGKILL to the kernel's pid, which the notebook records).

The browser is Debian's Chromium (`apt-get install chromium`; Playwright's own browser download is never used);
the test skips only when that executable is absent. Set `LOSSVIZ_CHROMIUM` to use another Chromium binary.
"""
import json, os, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "widgets_e2e.ipynb"
CHROMIUM = Path(os.environ.get("LOSSVIZ_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
# The dashboards of widgets_e2e.ipynb, by the CSS class of each one's root box, with the CSS class of the slider moved in
# each and the key that moves it (the geometry step slider starts at its last step, the others where a right step is valid).
DASHBOARDS = {"lossviz-calibration": ("lossviz-temperature", "ArrowRight"), "lossviz-losses": ("lossviz-param", "ArrowRight"),
              "lossviz-geometry": ("lossviz-step", "ArrowLeft"), "lossviz-monitor": ("lossviz-step", "ArrowLeft"), "lossviz-hessian": None,
              "lossviz-landscape": ("lossviz-span", "ArrowRight")}
# JupyterLab settings: no news/update pop-ups or kernel dialog over the notebook, every cell kept in the DOM (no windowing).
LAB_SETTINGS = {"@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
                "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True}}
ERROR_OUTPUTS = ('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]',
                 '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as r: return r.status


class LabServer:
    "A JupyterLab server on localhost in its own temporary directories, shut down by `stop`"
    def __init__(self, base: Path, log: Path):
        self.root, self.port, self.token = base / "root", _free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        dirs = {k: base / k.lower() for k in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                                               "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR")}
        for d in [self.root, *dirs.values()]: d.mkdir(parents=True)
        self._write_kernelspec(dirs["JUPYTER_DATA_DIR"])
        for name, values in LAB_SETTINGS.items():
            f = dirs["JUPYTERLAB_SETTINGS_DIR"] / f"{name}.jupyterlab-settings"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(values))
        shutil.copy(NOTEBOOK, self.root / NOTEBOOK.name)
        env = {**os.environ, **{k: str(v) for k, v in dirs.items()}, "JUPYTER_PLATFORM_DIRS": "1", "JUPYTER_PREFER_ENV_PATH": "0",
               "LOSSVIZ_E2E_PYTHON": sys.executable, "MPLBACKEND": "Agg",
               "OMP_NUM_THREADS": "1"}  # the kernel's tiny torch ops: several intra-op threads only contend on shared cores
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root}", "--ServerApp.terminals_enabled=False", "--allow-root",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly"]
        self.log = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @staticmethod
    def _write_kernelspec(data_dir: Path):
        "The `python3` kernel of this server is this interpreter (with JUPYTER_PREFER_ENV_PATH=0 user kernel specs come first)"
        spec = data_dir / "kernels" / "python3"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (lossviz)", "language": "python"}))

    def wait_ready(self, timeout: float = 90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if _get(f"{self.url}/api/status?token={self.token}") == 200: return
            except OSError: pass
            time.sleep(0.25)
        raise TimeoutError(f"JupyterLab did not answer on {self.url} within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")[-n:]

    def wait_kernel_ready(self, timeout: float = 120):
        "Wait until the server has exactly one kernel, idle and connected to the page (so Run All is not sent early)"
        deadline, kernels = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/api/kernels?token={self.token}", timeout=5) as r: kernels = json.load(r)
            except OSError: kernels = None  # the listing can fail while a kernel is starting (jupyter_server race)
            if kernels and len(kernels) == 1 and kernels[0]["execution_state"] == "idle" and kernels[0]["connections"] > 0: return
            time.sleep(0.25)
        raise TimeoutError(f"the notebook's kernel was not ready within {timeout} s: {kernels}\n{self.log_tail()}")

    def kernel_pids(self) -> list[int]:
        "Process ids the notebook's kernels wrote into the root (`kernel-<pid>.pid`)"
        return [int(p.stem.split("-")[1]) for p in self.root.glob("kernel-*.pid")]

    def stop(self):
        "Shut the server and its kernels down: the REST API first, then SIGTERM/SIGKILL to the server's process group"
        pids = self.kernel_pids()
        try:
            req = urllib.request.Request(f"{self.url}/api/shutdown?token={self.token}", method="POST")
            urllib.request.urlopen(req, timeout=5).close()
            self.proc.wait(timeout=15)
        except Exception: pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None: break
            try: os.killpg(self.proc.pid, sig)
            except ProcessLookupError: break
            try: self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired: pass
        for pid in pids:  # kernels run in their own sessions: end any that outlived the server
            try: os.kill(pid, signal.SIGKILL)
            except ProcessLookupError: pass
        self._log.close()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    d = Path(os.environ["LOSSVIZ_ARTIFACTS"]) if os.environ.get("LOSSVIZ_ARTIFACTS") else tmp_path / "artifacts"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def lab(tmp_path, artifacts, request):
    if not CHROMIUM.exists(): pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set LOSSVIZ_CHROMIUM)")
    server = LabServer(tmp_path / "lab", artifacts / "jupyterlab.log")
    request.addfinalizer(server.stop)
    server.wait_ready()
    return server


# JavaScript run in the page. Every code cell has run when each input prompt shows an execution count.
ALL_CELLS_RAN = """() => {
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());
  return prompts.length > 0 && prompts.every(t => /^\\[\\d+\\]:$/.test(t));
}"""
# What the plotly figures inside the element with class `cls` draw in their plot areas (`g.overplot`, which holds every trace
# layer of the cartesian subplots): the `d` of the paths (lines, bars, contour levels) and the `href` of the images (heatmaps).
TRACE_PATHS = """(cls) => [...document.querySelectorAll(`.${cls} .js-plotly-plot .main-svg .overplot path, .${cls} .js-plotly-plot .main-svg .overplot image`)]
                              .map(p => p.getAttribute('d') || p.getAttribute('href') || '').join('|')"""


# The fill colours the reliability diagram of the calibration dashboard draws: each legend entry's swatch, and the bars of
# each bar trace (`g.barlayer g.trace`, in trace order).
BAR_COLOURS = """() => {
  const root = document.querySelector('.lossviz-calibration .js-plotly-plot');
  const legend = Object.fromEntries([...root.querySelectorAll('.legend .traces')].map(t => [t.querySelector('.legendtext').textContent,
      [...t.querySelectorAll('.legendpoints path')].map(p => getComputedStyle(p).fill)]));
  const bars = [...root.querySelectorAll('.barlayer .trace')].map(t => [...t.querySelectorAll('.point path')].map(p => getComputedStyle(p).fill));
  return {legend, bars};
}"""


def _check_gap_legend(page):
    "Each gap entry of the reliability diagram's legend has the colour of its bars (one colour per gap trace)"
    drawn = page.evaluate(BAR_COLOURS)
    fills = [set(b) for b in drawn["bars"] if b]
    for name in ("gap (overconfident)", "gap (underconfident)"):
        swatch = drawn["legend"].get(name)
        assert swatch and len(set(swatch)) == 1 and set(swatch) in fills, f"legend {name!r} {swatch} matches no bar trace {fills}"


def _errors(page) -> list[str]:
    "Text of every stderr/error output in the notebook, the dashboards' output areas included (warnings count too)"
    return [t[:2000] for t in dict.fromkeys(t for sel in ERROR_OUTPUTS for t in page.locator(sel).all_inner_texts()) if t.strip()]


def _run_all(page):
    page.locator(".jp-Notebook .jp-Cell").first.click()  # the notebook must be the current widget for the Run menu
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def _move_slider(page, dashboard: str, slider: str, key: str, artifacts: Path):
    "Move the slider of class `slider` in `dashboard` with the keyboard (`key` three times); the plotted traces must change"
    handle = page.locator(f".{dashboard} .{slider} .noUi-handle").first
    handle.scroll_into_view_if_needed()
    before = page.evaluate(TRACE_PATHS, dashboard)
    assert before, f"{dashboard}: no plotted trace paths found"
    readout = page.locator(f".{dashboard} .{slider} .widget-readout").first
    value = readout.inner_text() if readout.count() else None
    handle.focus()
    for _ in range(3): handle.press(key)
    if readout.count(): page.wait_for_function("([el, v]) => el.textContent !== v", arg=[readout.element_handle(), value])
    page.wait_for_function(f"(b) => ({TRACE_PATHS})('{dashboard}') !== b", arg=before, timeout=60_000)


def _click_contour(page, artifacts: Path):
    "Click the middle of the landscape contour: the 1D slices through that point must be drawn in the second figure"
    slices = ".lossviz-landscape .js-plotly-plot >> nth=1"
    count = "() => document.querySelectorAll('.lossviz-landscape .js-plotly-plot')[1].querySelectorAll('.overplot path.js-line').length"
    assert page.evaluate(count) == 0, "the 1D slices are drawn before any click"
    drag = page.locator(".lossviz-landscape .js-plotly-plot").first.locator(".nsewdrag").first
    drag.scroll_into_view_if_needed()
    box = drag.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function(f"() => ({count})() === 2", timeout=60_000)
    page.locator(slices).screenshot(path=str(artifacts / "lossviz-landscape-slices.png"))


def _snapshot_dashboards(page, artifacts: Path, tag: str):
    "Screenshot of each dashboard (scrolled into view) and a summary of what each one plots"
    summary = []
    for dashboard in DASHBOARDS:
        loc = page.locator(f".{dashboard}").first
        drawn = page.evaluate(TRACE_PATHS, dashboard)
        summary.append(f"{dashboard}: present={loc.count() > 0}, plotted characters={len(drawn)}")
        if loc.count():
            try: loc.screenshot(path=str(artifacts / f"{dashboard}-{tag}.png"), timeout=10_000)
            except Exception as e: summary.append(f"  screenshot failed: {e}")
    (artifacts / f"dashboards-{tag}.txt").write_text("\n".join(summary))


def test_dashboards_in_jupyterlab(lab, artifacts):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        console = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        try:
            page.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}&reset")
            page.wait_for_selector(".jp-Notebook .jp-CodeCell")
            lab.wait_kernel_ready()
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
            _run_all(page)
            page.wait_for_function(ALL_CELLS_RAN, polling=500, timeout=300_000)
            for dashboard in DASHBOARDS:
                page.wait_for_function(f"() => ({TRACE_PATHS})('{dashboard}') !== ''", polling=500)
            _snapshot_dashboards(page, artifacts, "rendered")
            _check_gap_legend(page)
            assert not _errors(page), f"error outputs after Run All:\n" + "\n---\n".join(_errors(page))
            for dashboard, slider in DASHBOARDS.items():
                if slider: _move_slider(page, dashboard, *slider, artifacts)
            _click_contour(page, artifacts)
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
            _snapshot_dashboards(page, artifacts, "final")
            assert not _errors(page), f"error outputs after moving sliders:\n" + "\n---\n".join(_errors(page))
        except Exception:
            page.screenshot(path=str(artifacts / "failure.png"))
            _snapshot_dashboards(page, artifacts, "failure")
            raise
        finally:
            (artifacts / "console.log").write_text("\n".join(console))
            browser.close()
