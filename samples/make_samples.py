"""Regenerate the binary sample inputs: the event Parquet file and the invoice PDFs.

Run from anywhere: ``python samples/make_samples.py``. The output is deterministic, so
re-running it changes nothing in git. The PDFs are written by hand (a few dozen lines
of PDF syntax) rather than with a PDF library: the samples need small, valid,
distinct files, not typography.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent

ATTENDEES = [
    (
        "T-0001",
        "maria.silva@example.pt",
        "Maria Silva",
        "Maria",
        "Keynote: Data at scale",
        9,
        0,
        "Main hall",
    ),
    (
        "T-0002",
        "joao.pereira@example.com",
        "João Pereira",
        "João",
        "Polars in production",
        10,
        30,
        "Room A",
    ),
    (
        "T-0003",
        "ines.costa@example.org",
        "Inês Costa",
        "Inês",
        "Testing data pipelines",
        11,
        30,
        "Room B",
    ),
    (
        "T-0004",
        "pedro.santos@example.net",
        "Pedro Santos",
        "Pedro",
        "Polars in production",
        10,
        30,
        "Room A",
    ),
    (
        "T-0005",
        "ana.ferreira@example.com",
        "Ana Ferreira",
        "Ana",
        "Lightning talks; open mic",
        16,
        0,
        "Main hall",
    ),
    (
        "T-0006",
        "rui.oliveira@example.pt",
        "Rui Oliveira",
        "Rui",
        "Keynote: Data at scale",
        9,
        0,
        "Main hall",
    ),
]

INVOICES = [
    (
        "INV-2026-0412",
        "accounts@acme-bakery.example",
        "Acme Bakery Ltd",
        "Priya",
        "2026-05-15",
        [("Flour, 25 kg sacks", 12, 18.50), ("Delivery", 1, 25.00)],
    ),
    (
        "INV-2026-0413",
        "finance@blue-river-cafe.example",
        "Blue River Cafe",
        "Tom",
        "2026-05-15",
        [("Espresso beans, 1 kg", 20, 21.90)],
    ),
    (
        "INV-2026-0414",
        "billing@hillside-school.example",
        "Hillside School",
        "Mrs Okafor",
        "2026-05-20",
        [("Seedling trays", 40, 3.25), ("Compost, 50 l", 10, 8.75), ("Delivery", 1, 25.00)],
    ),
    (
        "INV-2026-0415",
        "office@greenleaf-coop.example",
        "Greenleaf Co-op",
        "Sven",
        "2026-05-22",
        [("Garden tools set", 3, 64.00)],
    ),
]


def pdf(lines: list[str]) -> bytes:
    """A one-page PDF showing ``lines`` in Helvetica."""

    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    body = ["BT", "/F1 12 Tf", "14 TL", "72 760 Td"]
    for line in lines:
        body.append(f"({esc(line)}) Tj T*")
    body.append("ET")
    stream = "\n".join(body).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def make_event() -> None:
    rows = []
    for ticket, email, name, first, session, hour, minute, room in ATTENDEES:
        start = datetime(2026, 6, 18, hour, minute, tzinfo=UTC)
        end = start.replace(hour=hour + 1)
        rows.append(
            {
                "ticket_id": ticket,
                "email": email,
                "name": name,
                "first_name": first,
                "session": session,
                "starts_at": start,
                "ends_at": end,
                "room": room,
            }
        )
    frame = pl.DataFrame(rows)
    frame.write_parquet(HERE / "event-invite" / "recipients.parquet", statistics=False)


def make_invoices() -> None:
    lines = ["invoice_no,email,company,contact,due_date,total,invoice_pdf"]
    for number, email, company, contact, due, items in INVOICES:
        total = sum(qty * price for _, qty, price in items)
        text = [f"Northwind Gardens - Invoice {number}", "", f"Bill to: {company}", ""]
        text += [f"{qty:>4} x {desc:<28} {qty * price:>9.2f} EUR" for desc, qty, price in items]
        text += ["", f"Total due {total:.2f} EUR by {due}", "IBAN: XX00 0000 0000 0000 (sample)"]
        (HERE / "invoices" / "files" / f"{number}.pdf").write_bytes(pdf(text))
        lines.append(f"{number},{email},{company},{contact},{due},{total:.2f},files/{number}.pdf")
    (HERE / "invoices" / "recipients.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    terms = ["Northwind Gardens - Terms of sale", "", "Payment within 30 days of the invoice date."]
    (HERE / "invoices" / "files" / "terms-of-sale.pdf").write_bytes(pdf(terms))


if __name__ == "__main__":
    make_event()
    make_invoices()
