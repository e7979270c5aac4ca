"""The list page's gallery view: a toggle that keeps the list parameters, thumbnails of first output images."""
import datetime as dt
from urllib.parse import parse_qs, urlsplit

from lxml import html as lxml_html

from examples.sample_pipeline import iter_sample_runs


def by_class(node, name, tag="*"):
    return node.xpath(f".//{tag}[contains(concat(' ', normalize-space(@class), ' '), ' {name} ')]")


def page(client, url):
    response = client.get(url)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return lxml_html.fromstring(response.get_data(as_text=True))


def test_gallery_shows_a_thumbnail_for_runs_with_an_image(client, store, runs_dir):
    ids = list(iter_sample_runs(8, store, now=dt.datetime(2025, 11, 20, tzinfo=dt.timezone.utc),
                                media_root=runs_dir.parent / "media"))  # the app fixture's media dir
    doc = page(client, "/?view=gallery&limit=100")
    cards = by_class(doc, "card", "li")
    assert len(cards) == len(ids)
    with_image = {r["execution_id"] for r in store.iter_records(ids) if r["config_name"] in ("stillepost", "bauhaus")}
    for card in cards:
        execution_id = by_class(card, "card-id")[0].text_content()
        images = card.xpath(".//img")
        if execution_id in with_image:
            assert images[0].get("src") == f"/api/runs/{execution_id}/thumbnail"
            response = client.get(images[0].get("src"))
            assert response.status_code == 200 and response.mimetype == "image/webp"
        else:
            assert not images and by_class(card, "no-image")
    assert not doc.xpath("//table")


def test_the_view_toggle_keeps_the_list_parameters(client, recorded_runs):
    doc = page(client, "/?config=stillepost&limit=1&order=asc")
    toggle = {a.text_content(): a.get("href") for a in doc.xpath("//p[@class='view-toggle']/a")}
    gallery = parse_qs(urlsplit(toggle["Gallery"]).query)
    assert gallery == {"config": ["stillepost"], "limit": ["1"], "order": ["asc"], "view": ["gallery"]}
    doc = page(client, "/" + toggle["Gallery"])  # a relative "?..." link on /
    assert len(by_class(doc, "card", "li")) == 1
    next_page = parse_qs(urlsplit(doc.xpath("//a[@rel='next']")[0].get("href")).query)
    assert next_page["view"] == ["gallery"] and next_page["config"] == ["stillepost"]
    assert doc.xpath("//form//input[@name='view']")[0].get("value") == "gallery"
    for link in doc.xpath("//ul[@class='downloads']//a"):  # exports take list parameters only
        assert "view" not in parse_qs(urlsplit(link.get("href")).query)
    assert "view" not in parse_qs(urlsplit(toggle["Table"]).query)


def test_an_unknown_view_is_a_400_page(client, recorded_runs):
    response = client.get("/?view=mosaic")
    assert response.status_code == 400 and response.mimetype == "text/html" and "view" in response.get_data(as_text=True)
