"""Deterministic generation of realistic seed data.

Given ``(entries, seed, now, timezone)`` the output is identical across runs. ``now`` is the
account's local midnight that starts the anchor day (`SimConfig.anchor`, default today), so the
data depends on the day, never on the time of day; and every random draw is made whatever the
dates say, so ids, workspaces, users, stories, roles, minutes, rates, notes, flags and external
references are the same for a seed on any day: only the dates and times (``date_performed``,
``created_at``, ``updated_at``) move with the anchor, by whole days, together with what follows
from an entry's age (approved, invoiced). Shapes produced:

* workspaces (8..300, scaled with ``entries``): some archived (every 7th, from index 5), some on
  another account (every 9th, from index 7; only visible with ``on_my_account=false``), some
  requiring time approvals, some defaulting tasks to non-billable, mixed currencies (USD, EUR,
  GBP, JPY);
* users (6..250), each with a default role and hourly rates; user 0 owns the API token;
* 4 stories per workspace (about one in five non-billable), 6 roles, 4 account locations;
* entries with ``created_at`` spread evenly over the 730 days before ``now`` (ids increase with
  creation),
  ``date_performed`` 0-6 days before creation, notes drawn from a pool containing unicode,
  emoji, newlines, ``""`` and ``null``; ~70% of entries older than 14 days approved, ~half of
  the approved ones older than 60 days invoiced; 3% with an external reference;
* ``updated_at``: 60% equal to ``created_at``, 25% edited up to 10 days later, 15% set by one
  of ``max(3, entries // 2000)`` "bulk update" instants, so MANY entries share an ``updated_at``
  second (the case that makes ``updated_after`` paging tricky, api-notes §11).

Seeding 1,000,000 entries takes a few seconds and ~150 MB (column arrays, see models.py).
"""

from __future__ import annotations

import bisect
import random
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from .models import (
    CURRENCY_INDEX,
    EntryStore,
    ExternalReference,
    Role,
    Story,
    User,
    Workspace,
)

MY_ACCOUNT_ID = 1001
OTHER_ACCOUNT_ID = 2002
FIRST_ENTRY_ID = 8_000_001
FIRST_WORKSPACE_ID = 4_000_001
FIRST_USER_ID = 7_000_001
FIRST_STORY_ID = 26_000_001
FIRST_ROLE_ID = 300_001
FIRST_EXT_REF_ID = 900_000_001

LOCATIONS = ["Remote", "HQ – Berlin", "São Paulo Office", "東京オフィス"]

_PROJECT_NAMES = [
    "Website Relaunch", "Migración de datos", "Q3 Audit 📊", "Ünïcödé Rollout",
    "東京 Office Fit-out", "ERP Integration", "Mobile App v2", "Brand Refresh",
    "Data Warehouse", "Security Review", "Customer Portal", "Onboarding Flow",
]
_ROLE_NAMES = ["Consultant", "Senior Consultant", "Project Manager", "Developer", "Designer",
               "QA Engineer"]
_USER_NAMES = [
    "Sim Admin", "Zoë Łukasik-Kravitz", "José Núñez", "李雷", "Ægir Þórsson", "Siobhán O'Brien",
    "Ana María Pérez", "Jürgen Groß", "Priya Raghunathan", "Mats Ødegård", "Chloé Dubois",
    "Nguyễn Văn An",
]
_STORY_NAMES = ["Discovery", "Implementation", "Testing & QA", "Meetings", "Support",
                "Documentation", "Deployment 🚀", "Design review"]
_NOTES: list[str | None] = [
    None, None, None, "", "",
    "Worked on the migration scripts",
    "Call with client about scope",
    "Code review\nFixed two bugs\n- null handling\n- paging off-by-one",
    "Überprüfung der Änderungen und Abstimmung mit dem Team",
    "会议记录：讨论了下一阶段的计划",
    "Deploy 🚀 and hotfix 🐛🔥",
    "Réunion de suivi — client satisfait ✅",
    "Line one\r\nLine two (CRLF)",
    "Tab\tseparated\tnotes",
    "Quotes \"double\" and 'single' and back\\slash",
    "Emoji only: 👩🏽‍💻👨‍👩‍👧",
    "Very long note " + "lorem ipsum dolor sit amet " * 20,
    "SQL-looking text: '; DROP TABLE time_entries; --",
    "<b>html</b> &amp; entities",
    "Weekly sync",
    "Pairing session",
    "Research spike",
    "Travel time ✈️",
    "Ωmega test — ≤ ≥ ≠ ∞",
]
_MINUTES = [15, 30, 45, 60, 60, 90, 120, 120, 180, 240, 300, 360, 480]


def auto_lock_date(today: date) -> date:
    """The Saturday on or before ``today - 60 days`` (lock dates must be Saturdays, api-notes §7)."""
    d = today - timedelta(days=60)
    return d - timedelta(days=(d.weekday() - 5) % 7)


def seed_reference_data(roles: dict[int, Role], workspaces: dict[int, Workspace],
                        stories: dict[int, Story], users: dict[int, User], store: EntryStore,
                        entries: int, rng: random.Random, now: int) -> None:
    """Create workspaces, users, stories and roles (sizes scale with ``entries``)."""
    start = now - 800 * 86400
    for i, name in enumerate(_ROLE_NAMES):
        rid = FIRST_ROLE_ID + i
        roles[rid] = Role(id=rid, name=name, created_at=start, updated_at=start)
    n_ws = max(8, min(300, 8 + entries // 2500))
    currencies = ["USD", "USD", "USD", "EUR", "USD", "GBP", "USD", "JPY", "USD", "EUR"]
    for i in range(n_ws):
        wid = FIRST_WORKSPACE_ID + i
        other = i % 9 == 7
        title = _PROJECT_NAMES[i % len(_PROJECT_NAMES)]
        if i >= len(_PROJECT_NAMES):
            title = f"{title} #{i // len(_PROJECT_NAMES) + 1}"
        workspaces[wid] = Workspace(
            id=wid,
            title=title,
            account_id=OTHER_ACCOUNT_ID if other else MY_ACCOUNT_ID,
            archived=i % 7 == 5,
            currency=currencies[i % len(currencies)],
            require_time_approvals=i % 3 == 0,
            tasks_default_non_billable=i % 5 == 4,
            created_at=start + i * 3600,
            updated_at=start + i * 3600,
        )
        for k in range(4):
            sid = FIRST_STORY_ID + i * 4 + k
            stories[sid] = Story(
                id=sid,
                title=_STORY_NAMES[(i + k) % len(_STORY_NAMES)],
                workspace_id=wid,
                billable=rng.random() >= 0.2,
                created_at=start + i * 3600 + k,
                updated_at=start + i * 3600 + k,
            )
    n_users = max(6, min(250, 6 + entries // 4000))
    role_ids = list(roles)
    for i in range(n_users):
        uid = FIRST_USER_ID + i
        name = _USER_NAMES[i % len(_USER_NAMES)]
        if i >= len(_USER_NAMES):
            name = f"{name} {i // len(_USER_NAMES) + 1}"
        users[uid] = User(
            id=uid,
            full_name=name,
            email_address=f"user{i}@example.com",
            account_id=MY_ACCOUNT_ID,
            role_id=None if i % 10 == 9 else role_ids[i % len(role_ids)],
            rate_in_cents=10000 + 2500 * (i % 6),
            cost_rate_in_cents=5000 + 1000 * (i % 5),
        )
    for name in LOCATIONS:
        store.location_code(name)


def seed_entries(store: EntryStore, workspaces: dict[int, Workspace], stories: dict[int, Story],
                 users: dict[int, User], n: int, rng: random.Random, now: int, tz: ZoneInfo, *,
                 next_id: int, next_ext_ref_id: int) -> tuple[int, int]:
    """Append ``n`` entries to ``store`` (see module docstring for the distribution), ids from
    ``next_id`` on; returns the next free entry id and external reference id."""
    ws_list = list(workspaces.values())
    stories_by_ws: dict[int, list[Story]] = {}
    for s in stories.values():
        stories_by_ws.setdefault(s.workspace_id, []).append(s)
    users = list(users.values())
    span = 730 * 86400
    start = now - span
    today = datetime.fromtimestamp(now, tz).date()
    today_ord = today.toordinal()
    n_clusters = max(3, n // 2000)
    clusters = sorted(start + rng.randrange(span) for _ in range(n_clusters))
    offset = int(datetime.fromtimestamp(now, tz).utcoffset().total_seconds())  # type: ignore[union-attr]
    epoch_ord = date(1970, 1, 1).toordinal()
    rnd = rng.random
    n_ws, n_users, n_notes, n_min = len(ws_list), len(users), len(_NOTES), len(_MINUTES)
    loc_count = len(LOCATIONS)
    next_ref = FIRST_EXT_REF_ID
    # Column references hoisted for speed.
    a_ids, a_cr, a_up, a_date = store.ids, store.created, store.updated, store.date
    a_min, a_rate, a_cost = store.minutes, store.rate, store.cost_rate
    a_ws, a_user, a_story, a_role = store.workspace, store.user, store.story, store.role
    b_bill, b_appr, b_inv, b_tax = store.billable, store.approved, store.invoiced, store.taxable
    b_cur, b_loc, b_alive = store.currency, store.location, store.alive
    l_notes, l_cache, slot_of = store.notes, store.cache, store.slot_of
    cur_index = CURRENCY_INDEX
    base_id = max(FIRST_ENTRY_ID, next_id)
    for i in range(n):
        eid = base_id + i
        created = start + (i * span) // n + int(rnd() * 600)
        if created > now:
            created = now
        d_ord = (created + offset) // 86400 + epoch_ord - int(rnd() * 7)
        if d_ord > today_ord:
            d_ord = today_ord
        ws = ws_list[int(rnd() * n_ws)]
        st_list = stories_by_ws[ws.id]
        story = st_list[int(rnd() * len(st_list))] if rnd() < 0.8 else None
        user = users[int(rnd() * n_users)]
        role = user.role_id if rnd() < 0.9 else None
        billable = story.billable if story is not None else not ws.tasks_default_non_billable
        if rnd() < 0.1:
            billable = not billable
        age = today_ord - d_ord
        # every draw is made whatever the dates say, so the stream (and every field that is
        # not a date) is the same for a seed on any day
        r_approved, r_invoiced = rnd(), rnd()
        approved = age > 14 and r_approved < 0.7
        invoiced = approved and age > 60 and r_invoiced < 0.5
        r, r_later = rnd(), rnd()
        if r < 0.60:
            updated = created
        elif r < 0.85:
            updated = created + int(r_later * min(10 * 86400, now - created))
        else:
            k = bisect.bisect_left(clusters, created)
            if k < n_clusters:
                k = min(n_clusters - 1, k + int(r_later * 3))
                updated = clusters[k]
            else:
                updated = created
        if updated > now:
            updated = now
        slot = len(a_ids)
        a_ids.append(eid)
        a_cr.append(created)
        a_up.append(updated)
        a_date.append(d_ord)
        a_min.append(_MINUTES[int(rnd() * n_min)] if rnd() < 0.9 else 1 + int(rnd() * 600))
        a_rate.append(user.rate_in_cents if billable else 0)
        a_cost.append(user.cost_rate_in_cents)
        a_ws.append(ws.id)
        a_user.append(user.id)
        a_story.append(story.id if story is not None else 0)
        a_role.append(role or 0)
        b_bill.append(billable)
        b_appr.append(approved)
        b_inv.append(invoiced)
        b_tax.append(rnd() < 0.15)
        b_cur.append(cur_index[ws.currency])
        b_loc.append(0 if rnd() < 0.7 else 1 + int(rnd() * loc_count))
        b_alive.append(1)
        l_notes.append(_NOTES[int(rnd() * n_notes)])
        l_cache.append(None)
        slot_of[eid] = slot
        if rnd() < 0.03:
            service = "jira" if rnd() < 0.5 else "netsuite"
            store.ext_refs[slot] = [ExternalReference(
                id=next_ref, subject_id=eid, service_name=service, service_model="worklog",
                service_model_ref=f"WL-{eid}", status="successful",
                external_link=f"https://{service}.example.com/worklog/{eid}",
                created_at=created, updated_at=created)]
            next_ref += 1
    store.live_count += n
    return base_id + n, max(next_ext_ref_id, next_ref)
