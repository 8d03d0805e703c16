"""What the reader bot says, in Indonesian and English, and how admin reports are fitted."""

from __future__ import annotations

import html
from collections.abc import Sequence

from bot.counting import count_utf16

TEXTS: dict[str, dict[str, str]] = {
    "id": {
        "welcome": "👋 Selamat datang di <b>{site}</b>!\nAnda akan menerima berita terbaru di sini begitu "
        "terbit. Pilih topik dengan /topik, lihat berita terbaru dengan /terbaru, berhenti "
        "dengan /stop.",
        "welcome_back": "Anda sudah berlangganan {site}. Atur topik dengan /topik.",
        "stopped": "Anda berhenti berlangganan {site}. Kirim /start untuk berlangganan lagi.",
        "not_subscribed": "Anda belum berlangganan. Kirim /start dulu.",
        "group_admin_only": "Hanya admin grup yang bisa mengatur langganan grup ini.",
        "topics": "Pilih topik yang ingin Anda terima (✅ = aktif). Tanpa pilihan = semua berita.",
        "topics_all": "Semua topik",
        "topics_done": "Selesai",
        "topics_saved": "Topik disimpan.",
        "no_topics": "Belum ada topik; Anda menerima semua berita.",
        "latest": "📰 <b>Berita terbaru</b>",
        "no_stories": "Belum ada berita.",
        "language": "Pilih bahasa:",
        "language_set": "Bahasa diganti ke Bahasa Indonesia.",
        "help": "Perintah:\n/start — berlangganan\n/stop — berhenti\n/topik — pilih topik\n"
        "/terbaru — 5 berita terbaru\n/bahasa — ganti bahasa\n/bantuan — bantuan ini",
        "unknown": "Maaf, saya tidak mengerti. Kirim /bantuan untuk daftar perintah.",
        "follow": "Ikuti kami",
        "too_many": "Terlalu banyak perintah. Coba lagi dalam satu menit.",
    },
    "en": {
        "welcome": "👋 Welcome to <b>{site}</b>!\nYou will get the newest stories here as soon as they are "
        "published. Choose topics with /topics, see the latest with /latest, stop with /stop.",
        "welcome_back": "You are already subscribed to {site}. Choose topics with /topics.",
        "stopped": "You have unsubscribed from {site}. Send /start to subscribe again.",
        "not_subscribed": "You are not subscribed yet. Send /start first.",
        "group_admin_only": "Only group admins can manage this group's subscription.",
        "topics": "Choose the topics you want (✅ = on). Nothing chosen = all stories.",
        "topics_all": "All topics",
        "topics_done": "Done",
        "topics_saved": "Topics saved.",
        "no_topics": "No topics yet; you get every story.",
        "latest": "📰 <b>Latest stories</b>",
        "no_stories": "No stories yet.",
        "language": "Choose a language:",
        "language_set": "Language set to English.",
        "help": "Commands:\n/start — subscribe\n/stop — unsubscribe\n/topics — choose topics\n"
        "/latest — 5 latest stories\n/language — change language\n/help — this help",
        "unknown": "Sorry, I did not understand. Send /help for the commands.",
        "follow": "Follow us",
        "too_many": "Too many commands. Please try again in a minute.",
    },
}
COMMANDS = {
    "id": [
        ("start", "Berlangganan berita"),
        ("stop", "Berhenti berlangganan"),
        ("topik", "Pilih topik"),
        ("terbaru", "5 berita terbaru"),
        ("bahasa", "Ganti bahasa"),
        ("bantuan", "Bantuan"),
    ],
    "en": [
        ("start", "Subscribe to the news"),
        ("stop", "Unsubscribe"),
        ("topics", "Choose topics"),
        ("latest", "5 latest stories"),
        ("language", "Change language"),
        ("help", "Help"),
    ],
}
ADMIN_COMMANDS = {
    "id": [
        ("status", "Status antrean dan umpan"),
        ("stats", "Pelanggan dan kiriman hari ini"),
        ("umpan", "Keadaan setiap umpan"),
        ("jeda", "Tahan kiriman satu kanal: /jeda KANAL"),
        ("lanjut", "Lanjutkan kanal: /lanjut KANAL"),
        ("kirimulang", "Kirim ulang kiriman: /kirimulang ID"),
        ("tarik", "Tarik berita dari semua kanal: /tarik URL"),
        ("mengapa", "Riwayat keputusan berita: /mengapa URL"),
        ("uji", "Pratinjau berita terbaru di setiap kanal"),
    ],
    "en": [
        ("status", "Queues and feeds"),
        ("stats", "Subscribers and today's posts"),
        ("feeds", "Each feed's state"),
        ("pause", "Hold a channel's posts: /pause CHANNEL"),
        ("resume", "Resume a channel: /resume CHANNEL"),
        ("resend", "Send a post again: /resend ID"),
        ("retract", "Take a story back everywhere: /retract URL"),
        ("why", "A story's decisions: /why URL"),
        ("test", "Preview the newest story on every channel"),
    ],
}
REPORT_LIMIT = 4000  # UTF-16 units of text in an admin report (Telegram's limit is 4096)


def fit_report(lines: Sequence[tuple[str, bool]], limit: int = REPORT_LIMIT) -> str:
    """Plain `(text, bold)` lines -> a Telegram HTML message showing at most `limit` UTF-16 units.

    The plain text is fitted first, dropping whole lines from the end (and saying how many),
    and only then escaped and formatted: a cut never falls inside a tag or an entity."""
    texts = [text for text, _ in lines]
    sizes = [count_utf16(text) for text in texts]
    keep = len(lines)
    if sum(sizes) + len(lines) - 1 > limit:
        note_size = count_utf16(f"… {len(lines)} more") + 1  # the note and its line break
        used, keep = 0, 0
        while keep < len(lines) and used + sizes[keep] + (1 if keep else 0) + note_size <= limit:
            used += sizes[keep] + (1 if keep else 0)
            keep += 1
        if keep == 0:  # one enormous first line: cut it, at a character
            head = texts[0]
            while count_utf16(head) > limit - note_size:
                head = head[: len(head) - max(1, (count_utf16(head) - limit + note_size) // 2)]
            return f"{html.escape(head)}\n{html.escape(f'… {len(lines) - 1} more')}"
    out = [
        f"<b>{html.escape(text)}</b>" if bold and text else html.escape(text) for text, bold in lines[:keep]
    ]
    if keep < len(lines):
        out.append(html.escape(f"… {len(lines) - keep} more"))
    return "\n".join(out)
