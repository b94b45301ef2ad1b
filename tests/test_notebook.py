"""The Python API in a real Jupyter kernel, where a loop is always running and
``asyncio.run`` cannot be called: a cell builds a 3-row DataFrame campaign and runs it."""

from __future__ import annotations

from pathlib import Path

import ipykernel  # noqa: F401 - the kernel the cell runs in (a test dependency)
import nbclient
import nbformat
import pytest

CELL = """
import asyncio

import polars as pl

import batchsend as bs

assert asyncio.get_running_loop().is_running()  # the kernel's own loop, as in a notebook
people = pl.DataFrame(
    {"email": ["ann@example.org", "bob@example.org", "cy@example.org"],
     "first_name": ["Ann", "Bob", "Cy"]}
)
campaign = bs.Campaign(
    provider="tosend",
    sender="news@example.com",
    subject="Hi {{ first_name }}",
    text="Hello {{ first_name }}!",
    recipients=people,
)
run = campaign.run(sandbox=True, progress=False)
report = run.report()
print(f"state={run.state.value} sent={run.counts['sent']} rows={report.height}")
print("emails=" + ",".join(sorted(report["email"])))
"""


# jupyter_client and jupyter_core warn about their own configuration paths; the suite
# turns warnings into errors, and those are not batchsend's to fix.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_notebook_cell_runs_a_dataframe_campaign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(CELL)]
    client = nbclient.NotebookClient(
        notebook,
        timeout=60,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working folder
    )
    client.execute()  # raises CellExecutionError, with the traceback, if the cell fails
    printed = "".join(
        out.get("text", "") for out in notebook.cells[0].outputs if out.output_type == "stream"
    )
    assert "state=finished sent=3 rows=3" in printed
    assert "emails=ann@example.org,bob@example.org,cy@example.org" in printed
    assert (tmp_path / "batchsend.db").is_file()
