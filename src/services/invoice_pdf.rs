//! An invoice as a PDF (A4, one page), written with `printpdf` in its
//! built-in Helvetica so that no font file ships with the server.

use printpdf::{
    BuiltinFont, Mm, Op, PdfDocument, PdfFontHandle, PdfPage, PdfSaveOptions, Point, Pt, TextItem,
};

use super::invoices::Invoice;

/// The built-in PDF fonts cover Windows-1252 only: other characters are
/// shown as `?` (the JSON invoice keeps them exactly).
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if (' '..='~').contains(&c) || ('\u{a0}'..='\u{ff}').contains(&c) { c } else { '?' })
        .collect()
}

struct Page {
    ops: Vec<Op>,
    y: f32,
}

impl Page {
    fn text(&mut self, x: f32, size: f32, bold: bool, text: &str) {
        let font = if bold { BuiltinFont::HelveticaBold } else { BuiltinFont::Helvetica };
        self.ops.extend([
            Op::StartTextSection,
            Op::SetTextCursor { pos: Point::new(Mm(x), Mm(self.y)) },
            Op::SetFont { font: PdfFontHandle::Builtin(font), size: Pt(size) },
            Op::ShowText { items: vec![TextItem::Text(printable(text))] },
            Op::EndTextSection,
        ]);
    }

    fn line(&mut self, size: f32, bold: bool, text: &str) {
        self.text(20.0, size, bold, text);
        self.y -= size * 0.5 + 1.5;
    }

    /// A row of the amounts table: label left, amount right-ish.
    fn amount(&mut self, bold: bool, label: &str, value: &str) {
        self.text(20.0, 10.0, bold, label);
        self.text(150.0, 10.0, bold, value);
        self.y -= 6.5;
    }

    fn gap(&mut self, mm: f32) {
        self.y -= mm;
    }
}

/// Renders the invoice (with its credit notes listed at the end).
pub fn render(invoice: &Invoice) -> Vec<u8> {
    let mut doc = PdfDocument::new(&format!("Invoice {}", invoice.number));
    let mut p = Page { ops: Vec::new(), y: 275.0 };
    p.line(18.0, true, &format!("Invoice {}", invoice.number));
    p.line(10.0, false, &format!("Issued {}", invoice.issued_at.format("%Y-%m-%d")));
    p.gap(4.0);

    p.line(10.0, true, "Seller");
    p.line(10.0, false, &invoice.seller.name);
    if let Some(address) = &invoice.seller.address {
        for part in address.split(['\n', ';']).map(str::trim).filter(|s| !s.is_empty()) {
            p.line(10.0, false, part);
        }
    }
    if let Some(tax_id) = &invoice.seller.tax_id {
        p.line(10.0, false, &format!("Tax ID: {tax_id}"));
    }
    p.gap(4.0);

    p.line(10.0, true, "Bill to");
    match &invoice.buyer {
        Some(b) => {
            p.line(10.0, false, &b.legal_name);
            if let Some(a) = &b.address {
                p.line(10.0, false, &a.line1);
                if let Some(l2) = &a.line2 {
                    p.line(10.0, false, l2);
                }
                let city = [a.postal_code.as_deref(), Some(a.city.as_str()), a.region.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                p.line(10.0, false, &city);
                p.line(10.0, false, &a.country);
            }
            if let Some(email) = &b.email {
                p.line(10.0, false, email);
            }
            if let Some(t) = &b.tax_id {
                p.line(10.0, false, &format!("Tax ID ({}): {}", t.kind, t.value));
            }
        }
        None => p.line(10.0, false, &format!("Wallet {}", invoice.wallet_id)),
    }
    p.gap(6.0);

    p.line(10.0, true, "Item");
    p.line(10.0, false, &invoice.line.description);
    let bonus = if invoice.line.bonus_credits.is_zero() {
        String::new()
    } else {
        format!(" + {} bonus credits", invoice.line.bonus_credits)
    };
    p.line(
        10.0,
        false,
        &format!("{} credits{bonus}, validity {}", invoice.line.credits, invoice.line.validity),
    );
    p.gap(4.0);

    p.amount(false, "Subtotal", &format!("USD {}", invoice.subtotal_usd));
    let tax_label = match (&invoice.tax.rate, invoice.tax.source.as_str()) {
        (Some(rate), _) => format!("Tax ({rate})"),
        (None, "stripe") => "Tax (Stripe Tax)".to_string(),
        _ => "Tax".to_string(),
    };
    p.amount(false, &tax_label, &format!("USD {}", invoice.tax_usd));
    p.amount(true, "Total", &format!("USD {}", invoice.total_usd));
    p.gap(4.0);
    p.line(10.0, false, &format!("Payment method: {}", invoice.payment_method));
    p.line(10.0, false, &format!("Top-up: {}", invoice.top_up_id));

    if !invoice.credit_notes.is_empty() {
        p.gap(6.0);
        p.line(10.0, true, "Credit notes");
        for n in &invoice.credit_notes {
            p.line(
                10.0,
                false,
                &format!("{} ({}): USD {} refunded", n.number, n.issued_at.format("%Y-%m-%d"), n.total_usd),
            );
        }
    }

    let page = PdfPage::new(Mm(210.0), Mm(297.0), p.ops);
    doc.with_pages(vec![page]).save(&PdfSaveOptions::default(), &mut Vec::new())
}
