"""Regenerate the bundled sample pages: python samples/make_samples.py (needs Pillow)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pages import draw_page  # noqa: E402

PAGES = {
    "invoice-0001.png": ["INVOICE 2026-0001", "Customer: Harbor Freight Lines", "Item Qty Price",
                         "Pallet wrap 12 48.00", "Dock fees 1 120.00", "Total due 168.00"],
    "letter-0002.png": ["Dear Ms. Okafor,", "Thank you for your order of", "November 3. The shipment left",
                        "our warehouse today and should", "arrive within five days.", "Kind regards, Lena Park"],
    "memo-0003.png": ["MEMO", "To: Night shift operators", "Subject: Scanner maintenance",
                      "Clean the rollers every Friday", "and log each batch number."],
    "receipt-0004.jpg": ["CORNER BAKERY", "Sourdough loaf 6.50", "Croissant x3 9.00", "Coffee 3.20",
                         "TOTAL 18.70", "Paid by card"],
}

if __name__ == "__main__":
    folder = Path(__file__).resolve().parent / "pages"
    for seed, (name, lines) in enumerate(PAGES.items()):
        draw_page(folder / name, lines, size=(850, 520), font_px=32, scanned=True, seed=seed)
        print(folder / name)
