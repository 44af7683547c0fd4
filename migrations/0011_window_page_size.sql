-- Backfill windows are read with pages of up to SYNCD_PER_PAGE entries (5,000 by default,
-- issue #24), halved after a page times out, and Kantata may clamp the size it serves. A
-- window that stops part-way resumes at its next page only when it is asked at the size its
-- stored pages were read with: page n of 2,500 is not page n of 5,000. `page_size` records that
-- size with the checkpoint; a resume at another size starts the window again at page 1 (the
-- pages already stored are upserted again, changing nothing).

ALTER TABLE syncd.windows ADD COLUMN page_size integer CHECK (page_size IS NULL OR page_size > 0);
COMMENT ON COLUMN syncd.windows.page_size IS
    'Entries per page (Kantata''s meta.page_size) of the pages counted in pages_done; NULL '
    'before the first page is stored.';
