#!/usr/bin/env python3
"""The status page in headless Chromium (scripts/ui-test.sh runs it; it starts the services).

Environment: STATUS_URL (the sink's status server), DB_URL (its database, read with psql),
OUT (where screenshots go). Arguments: --checker-pid (frozen with SIGSTOP while the page,
the JSON API and SQL are compared, so that no row arrives in between, then resumed),
--wait-rows (slots per target to wait for first).

Checks, failing with a message naming the target and the value:
  1. the JSON API's slot counts equal SQL's on the same rows;
  2. the overview lists every target of the API, each with the API's state, uptime,
     latency and error kind, rendered as the page renders them, and the 90-bucket bar (a rect per run of one state);
  3. each target page (reached by clicking its link: the name travels percent-encoded)
     shows its name, uptime and its failures with SQL's latest error text;
  4. with the checker running again, the overview reloads by itself and shows more slots.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

STATUS_URL = os.environ["STATUS_URL"]
DB_URL = os.environ["DB_URL"]
OUT = os.environ["OUT"]


def fail(msg):
    print(f"ui_test: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def log(msg):
    print(f"[ui_test {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def api(path):
    with urllib.request.urlopen(STATUS_URL + path, timeout=15) as r:
        return json.load(r)


def sql(query):
    """Rows of `query` as lists of strings (psql, unaligned, tab-separated)."""
    out = subprocess.run(
        ["psql", DB_URL, "-X", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", query],
        check=True, capture_output=True, text=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line]


# The page's formats (sink::status::html::{ratio, millis}).
def fmt_ratio(r):
    return "–" if r is None else f"{r * 100:.2f} %"


def fmt_ms(s):
    return "–" if s is None else f"{s * 1000:.1f} ms"


def counts_sql():
    """target -> (up slots, down slots, latest success, latest error text) from the rows."""
    rows = sql(
        "SELECT target_name, count(*) FILTER (WHERE success), count(*) FILTER (WHERE NOT success),"
        " (array_agg(success ORDER BY scheduled_at DESC))[1],"
        " (array_agg(error ORDER BY scheduled_at DESC) FILTER (WHERE NOT success))[1]"
        " FROM probe_results GROUP BY target_name"
    )
    return {r[0]: (int(r[1]), int(r[2]), r[3] == "t", r[4] or None) for r in rows}


def counts_api(overview):
    return {
        t["name"]: (t["uptime_24h"]["up_slots"], t["uptime_24h"]["down_slots"])
        for t in overview["targets"]
    }


def wait_for(what, limit, check, every=1.0):
    t0 = time.time()
    while True:
        value = check()
        if value:
            return value
        if time.time() - t0 > limit:
            fail(f"{what} not within {limit}s")
        time.sleep(every)


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1500,1000", "--lang=en-US"]:
        opts.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def screenshot(driver, name):
    """A full-page PNG in OUT."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1500, min(max(height + 40, 600), 6000))
    path = os.path.join(OUT, name)
    driver.save_screenshot(path)
    driver.set_window_size(1500, 1000)
    log(f"screenshot {path}")


def rows_by_name(driver):
    return {tr.get_attribute("data-target"): tr for tr in driver.find_elements(By.CSS_SELECTOR, "tr.target")}


def check_overview(driver, overview, db):
    for state, n in overview["counts"].items():
        shown = driver.find_element(By.CSS_SELECTOR, f'.counts span[data-state="{state}"]').get_attribute("data-count")
        if int(shown) != n:
            fail(f"the page counts {shown} {state}, the API {n}")
    if sum(overview["counts"].values()) != overview["total_targets"]:
        fail(f"counts {overview['counts']} do not add up to {overview['total_targets']} targets")
    down = [a.get_attribute("data-target") for a in driver.find_elements(By.CSS_SELECTOR, "#down-now a")]
    if down != overview["down_targets"]:
        fail(f"the page lists {down} as down, the API {overview['down_targets']}")
    rows = rows_by_name(driver)
    names = [t["name"] for t in overview["targets"]]
    if sorted(rows) != sorted(names):
        fail(f"overview rows {sorted(rows)} != API targets {sorted(names)}")
    for t in overview["targets"]:
        name, tr = t["name"], rows[t["name"]]
        up, down, latest_ok, _ = db[name]
        state = tr.get_attribute("data-state")
        if state != t["state"]:
            fail(f"{name}: page state {state} != API {t['state']}")
        if state != ("up" if latest_ok else "down"):
            fail(f"{name}: page state {state}, but its latest row says success={latest_ok}")
        badge = tr.find_element(By.CSS_SELECTOR, "td.state .badge").text
        if badge != state:
            fail(f"{name}: badge {badge!r} != {state}")
        for w in ["24h", "7d", "30d"]:
            cell = tr.find_element(By.CSS_SELECTOR, f'td.uptime[data-window="{w}"]')
            want = fmt_ratio(t[f"uptime_{w}"]["ratio"])
            if cell.text != want:
                fail(f"{name}: uptime {w} shows {cell.text!r}, API says {want!r}")
        cell = tr.find_element(By.CSS_SELECTOR, 'td.uptime[data-window="24h"]')
        page_counts = (int(cell.get_attribute("data-up")), int(cell.get_attribute("data-down")))
        if page_counts != (up, down):
            fail(f"{name}: page counts up/down {page_counts}, SQL {(up, down)}")
        want_ratio = up / (up + down)
        shown = fmt_ratio(want_ratio)
        if cell.text != shown:
            fail(f"{name}: uptime 24h shows {cell.text!r}, SQL's rows give {shown!r}")
        for cls, key in [("p50", "latency_p50_seconds"), ("p95", "latency_p95_seconds")]:
            text = tr.find_element(By.CSS_SELECTOR, f"td.{cls}").text
            if text != fmt_ms(t[key]):
                fail(f"{name}: {cls} shows {text!r}, API says {fmt_ms(t[key])!r}")
        err = tr.find_element(By.CSS_SELECTOR, "td.last-error").text
        kind = t["last_error_kind"]
        if (kind or "–") not in err:
            fail(f"{name}: last error shows {err!r}, API says {kind!r}")
        # one rect per run of buckets of one state: expanded, the states of the API's 90 buckets
        bars = tr.find_elements(By.CSS_SELECTOR, "svg.bar rect")
        shown = [b.get_attribute("data-state") for b in bars for _ in range(int(b.get_attribute("data-buckets")))]
        api = [b["state"] for b in t["buckets"]]
        if len(shown) != 90 or shown != api:
            fail(f"{name}: the bar shows {len(shown)} buckets {shown}, the API {api}")
        log(f"overview ok: {name!r} {state} up={up} down={down} 24h={cell.text} p50={fmt_ms(t['latency_p50_seconds'])}")


def check_target_pages(driver, overview, db):
    for i, t in enumerate(overview["targets"]):
        name = t["name"]
        driver.get(STATUS_URL + "/?refresh=0")
        link = rows_by_name(driver)[name].find_element(By.CSS_SELECTOR, "td.name a")
        link.click()
        h1 = wait_for(f"the page of {name!r}", 10,
                      lambda: driver.find_elements(By.CSS_SELECTOR, "h1#target-name"), every=0.2)[0]
        if h1.get_attribute("data-target") != name:
            fail(f"clicked {name!r}, got the page of {h1.get_attribute('data-target')!r} ({driver.current_url})")
        detail = api("/api/v1/targets/" + urllib.parse.quote(name, safe=""))
        tile = driver.find_element(By.CSS_SELECTOR, ".tile.uptime-24h .value").text
        if tile != fmt_ratio(detail["summary"]["uptime_24h"]["ratio"]):
            fail(f"{name}: uptime tile {tile!r} != API {fmt_ratio(detail['summary']['uptime_24h']['ratio'])!r}")
        up, down, _, last_error = db[name]
        failures = driver.find_elements(By.CSS_SELECTOR, "table#failures tr.failure")
        if len(failures) != min(down, 20):
            fail(f"{name}: {len(failures)} failures listed, SQL has {down} (the page lists at most 20)")
        if down:
            text = failures[0].find_element(By.CSS_SELECTOR, "td.error-text").text
            if text != last_error:
                fail(f"{name}: latest failure text {text!r} != SQL's {last_error!r}")
        if not driver.find_elements(By.CSS_SELECTOR, "svg#latency-chart g.point"):
            fail(f"{name}: no latency chart")
        slots = driver.find_elements(By.CSS_SELECTOR, "svg#slots rect")
        if len(slots) != len(detail["slots"]):
            fail(f"{name}: {len(slots)} slot rects, API has {len(detail['slots'])}")
        log(f"target page ok: {name!r} ({driver.current_url}), {len(failures)} failures")
        screenshot(driver, f"target-{i}.png")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checker-pid", type=int, required=True)
    p.add_argument("--wait-rows", type=int, default=8)
    a = p.parse_args()

    def enough():
        try:
            o = api("/api/v1/targets")
        except Exception:  # not up yet
            return None
        c = counts_api(o)
        return len(c) >= 3 and all(u + d >= a.wait_rows for u, d in c.values()) and o

    log(f"waiting for {a.wait_rows} slots of each of 3 targets")
    wait_for("rows of every target", 120, enough)

    # Freeze the checker: no new row while the page, the API and SQL are compared.
    os.kill(a.checker_pid, signal.SIGSTOP)
    try:
        last = {}

        def settled():
            nonlocal last
            o = api("/api/v1/targets")
            db = counts_sql()
            now = counts_api(o)
            same = now == last and all(now[n] == db[n][:2] for n in now)
            last = now
            return same and (o, db)

        overview, db = wait_for("the API agreeing with SQL (rollups caught up)", 60, settled, every=1.5)
        log("API slot counts equal SQL's: " + ", ".join(f"{n!r}={c}" for n, c in counts_api(overview).items()))
        driver = browser()
        driver.get(STATUS_URL + "/?refresh=0")
        check_overview(driver, overview, db)
        screenshot(driver, "overview.png")
        check_target_pages(driver, overview, db)
    except BaseException:
        if "driver" in locals():
            driver.quit()
        raise
    finally:
        os.kill(a.checker_pid, signal.SIGCONT)

    # The page reloads by itself (meta refresh) and shows newer numbers.
    try:
        driver.get(STATUS_URL + "/?refresh=3")
        driver.execute_script("window.__not_reloaded = true")
        first = driver.find_element(By.ID, "generated-at").get_attribute("datetime")
        name = overview["targets"][0]["name"]
        before = int(rows_by_name(driver)[name].find_element(By.CSS_SELECTOR, 'td.uptime[data-window="24h"]').get_attribute("data-up"))
        before_down = int(rows_by_name(driver)[name].find_element(By.CSS_SELECTOR, 'td.uptime[data-window="24h"]').get_attribute("data-down"))

        def newer():
            try:
                if driver.execute_script("return window.__not_reloaded === true"):
                    return None
                gen = driver.find_element(By.ID, "generated-at").get_attribute("datetime")
                cell = rows_by_name(driver)[name].find_element(By.CSS_SELECTOR, 'td.uptime[data-window="24h"]')
                total = int(cell.get_attribute("data-up")) + int(cell.get_attribute("data-down"))
                return gen != first and total > before + before_down and (gen, total)
            except (StaleElementReferenceException, WebDriverException, KeyError):
                return None

        gen, total = wait_for("the overview reloading by itself with more slots", 45, newer, every=0.5)
        log(f"the page reloaded by itself: generated {first} -> {gen}, {name!r} slots {before + before_down} -> {total}")
        screenshot(driver, "overview-reloaded.png")
    finally:
        driver.quit()
    log("browser checks passed")


if __name__ == "__main__":
    main()
