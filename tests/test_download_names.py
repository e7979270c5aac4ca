"""The list page's CSV buttons through a real gunicorn: run rows and item rows, each with its
own file name, "for Excel" the same with a BOM; XLSX headers are the CSV column names."""
import csv
import io
import re
import urllib.request

import openpyxl
from lxml import html

from execution_history.exporters.cells import ITEM_COLUMNS, RUN_COLUMNS

from .conftest import record_every_type


def fetch(url):
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.headers, response.read()


def test_csv_buttons_hold_what_they_say_under_distinct_names(live_server, store):
    ids = [record_every_type(store, config_name=f"cfg{n}") for n in range(2)]
    _, page = fetch(live_server.url + "/")
    links = html.fromstring(page).xpath("//ul[@class='downloads']//a")
    buttons = [(a.text_content().strip(), a.get("href")) for a in links if a.get("data-format") == "csv"]
    labels = [label for label, _ in buttons]
    assert len(set(labels)) == len(labels) == 4
    names = {}
    for label, href in buttons:
        headers, data = fetch(live_server.url + href)
        name = re.fullmatch(r'attachment; filename="(runs_\d{8}_\d{6}(_items)?\.csv)"',
                            headers["Content-Disposition"]).group(1)
        names[label] = name
        assert data.startswith(b"\xef\xbb\xbf") == ("Excel" in label)
        rows = list(csv.reader(io.StringIO(data.decode("utf-8").removeprefix("\ufeff"), newline="")))
        if "items" in label:
            assert rows[0] == list(ITEM_COLUMNS) and name.endswith("_items.csv")
            assert len(rows) - 1 == sum(len(store.load(i)["items"]) for i in ids)
        else:
            assert rows[0] == list(RUN_COLUMNS) and not name.endswith("_items.csv")
            assert sorted(row[0] for row in rows[1:]) == sorted(ids)
    # files of different content never share a name (the time stamp aside)
    stems = {re.sub(r"\d{8}_\d{6}", "T", name) for name in names.values()}
    assert stems == {"runs_T.csv", "runs_T_items.csv"}
    headers, _ = fetch(f"{live_server.url}/api/runs/{ids[0]}/export/csv?shape=items")
    assert headers["Content-Disposition"] == f'attachment; filename="{ids[0]}.csv"'  # one run: its id


def test_xlsx_headers_are_the_csv_column_names(live_server, store):
    execution_id = record_every_type(store)
    for url in (f"/api/runs/{execution_id}/export/xlsx", "/api/runs/export/xlsx"):
        _, data = fetch(live_server.url + url)
        book = openpyxl.load_workbook(io.BytesIO(data))
        assert [c.value for c in book["Runs"][1]] == list(RUN_COLUMNS)
        assert [c.value for c in book["Items"][1]] == list(ITEM_COLUMNS)
        about = {row[0]: row[1] for row in book["About"].iter_rows(values_only=True)}
        assert "UTC" in about["times"]
