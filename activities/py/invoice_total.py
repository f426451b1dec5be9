"""invoice_total (component-v1, Python): sum an invoice's lines, minus a discount."""

from typing import TypedDict


class Line(TypedDict):
    sku: str
    qty: int
    unit_cents: int


class Invoice(TypedDict):
    lines: list[Line]
    discount_pct: int


class Total(TypedDict):
    total_cents: int
    lines: int


def run(invoice: Invoice) -> Total:
    gross = sum(line["qty"] * line["unit_cents"] for line in invoice["lines"])
    return {"total_cents": gross - gross * invoice["discount_pct"] // 100,
            "lines": len(invoice["lines"])}
