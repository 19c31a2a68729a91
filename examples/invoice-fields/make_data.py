"""Writes invoices.jsonl: invoice and payment messages with the fields to extract.

Run from this folder: python make_data.py  (deterministic: the same file every time).
The messages are invented for the kolm project (CC0, see LICENSE.txt).
"""

import json
import random

VENDORS = [
    "Northwind Supplies", "Bluebird Logistics", "Acme Tools", "Greenleaf Catering",
    "Orbit Print Co", "Harbor Freight Lines", "Kestrel IT Services", "Maple Office Goods",
    "Silverline Cleaning", "Pioneer Packaging", "Redwood Legal LLP", "Cobalt Cloud Hosting",
    "Sunrise Bakery", "Atlas Security", "Vertex Consulting", "Lumen Electric",
    "Brightwater Plumbing", "Fjord Design Studio", "Quartz Analytics", "Summit Staffing",
    "Ironclad Insurance", "Willow Florists", "Nimbus Telecom", "Granite Builders",
    "Copperfield Media", "Tidewater Marine", "Aurora Translation", "Beacon Courier",
    "Evergreen Landscaping", "Falcon Travel", "Juniper Software", "Meridian Labs",
]
CURRENCIES = [("USD", ["$", "USD ", "US$"]), ("EUR", ["EUR ", "€"]), ("GBP", ["£", "GBP "])]
TEMPLATES = [
    "Hi, please find attached invoice {no} from {vendor} for {amt}. Payment is due by {due}.",
    "Reminder: invoice {no} ({vendor}) of {amt} is due on {due}. Thanks!",
    "From {vendor} accounts team - Invoice number: {no}. Amount due: {amt}. Due date: {due}.",
    "{vendor} billed us {amt} on invoice {no}; they want it paid before {due}.",
    "Hello, this is {vendor}. Our invoice {no} for {amt} remains unpaid. Due {due}.",
    "Invoice {no}\nVendor: {vendor}\nTotal: {amt}\nDue: {due}",
    "Can you pay {vendor}? Invoice {no}, total {amt}, due {due}.",
    "FYI {vendor} sent invoice {no} today. Total is {amt} and the due date is {due}.",
    "Payment request: {amt} to {vendor} for invoice {no}, please settle by {due}.",
    "Statement from {vendor}: invoice {no}, balance {amt}, payable by {due}.",
]


def invoice_no(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"INV-{rng.randrange(1000, 99999)}"
    if kind == 1:
        return f"{rng.choice('ABCDEFGHKMNPRST')}-{rng.randrange(100, 9999)}"
    if kind == 2:
        return str(rng.randrange(10000, 999999))
    return f"{rng.randrange(2023, 2026)}/{rng.randrange(1, 999):03d}"


def row(rng: random.Random) -> dict:
    vendor = rng.choice(VENDORS)
    currency, symbols = rng.choice(CURRENCIES)
    total = f"{rng.randrange(5, 20000)}.{rng.randrange(100):02d}"
    due = f"{rng.randrange(2024, 2027)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    no = invoice_no(rng)
    text = rng.choice(TEMPLATES).format(vendor=vendor, no=no, amt=rng.choice(symbols) + total, due=due)
    out = {"vendor": vendor, "invoice": no, "total": total, "currency": currency, "due": due}
    return {"input": text, "output": json.dumps(out)}


def main() -> None:
    rng = random.Random(7)
    rows = [row(rng) for _ in range(240)]
    with open("invoices.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
