"""Note templates for the synthetic evaluation set (see ``make_eval_set``).

One template is a list of lines; ``{slot}`` markers are filled by ``make_eval_set.Slots``
and a line starting with ``?`` is included about two times in three. The kinds mirror
the free text ClinAlign stores: triage notes, discharge summaries, portal messages,
referral letters, progress notes, telephone encounters, device-clinic reports,
social-work notes, radiology reports, medication reconciliations, nursing shift notes,
casual lower-case patient messages, and clinician-written teaching text with no
identifiers at all.
"""

from __future__ import annotations

TRIAGE = [
    "ED TRIAGE NOTE",
    "Patient: {pt_lf}    {mrn_cue}    DOB: {dob}",
    "Arrival: {date} 14:32 via EMS from {hospital}.",
    "{pt_title} is a {pt_age} with a history of {problem} and {problem} who presents with "
    "chest pain for {days} days.",
    "{clin3}",
    "?Home medications: {drug}; {drug}; {drug}.",
    "?Accompanied by {rel}, who can be reached at {phone}.",
    "?{pronoun} lives in {city}, {state} with {poss} family.",
    "{clin}",
    "?Seen with {young_age} in the next bay; no relation.",
    "Triage nurse: {nurse}",
]

DISCHARGE = [
    "DISCHARGE SUMMARY",
    "Name: {pt_lf}    {mrn_cue}    {account}",
    "Date of admission: {date}    Date of discharge: {date}",
    "Attending: {doc}    PCP: {doc2}, phone {phone}, fax {phone}",
    "",
    "HISTORY OF PRESENT ILLNESS",
    "{pt_title} is a {pt_age} with {problem}, {problem} and {problem} admitted with "
    "worsening dyspnoea over {days} days. {clin3}",
    "",
    "HOSPITAL COURSE",
    "{pronoun} was started on {drug} and {drug}. {clin3}",
    "On hospital day 3 {poss} symptoms improved. {clin3}",
    "?Case discussed with {rel} at the bedside on {date_ny}; {rel_first} agrees with the plan.",
    "?Cardiology ({doc2}) reviewed on {date} and recommended {drug}. {clin}",
    "{clin3}",
    "",
    "DISCHARGE MEDICATIONS",
    "{druglist}",
    "",
    "FOLLOW-UP",
    "See {doc} on {date_ny} at {hospital}, {addr}.",
    "?Outpatient labs on {date}. Results will be posted to {url}.",
    "?Contact: {rel}, {phone}.",
    "Electronically signed by {doc} on {date} 17:05.",
]

MESSAGE = [
    "Subject: question about my medication",
    "Hi Dr. {doc_last},",
    "This is {pt} (DOB {dob}). I have been taking {drug} since {date_ny} and I feel dizzy "
    "in the mornings. {clin}",
    "?My {rel_relation_free} can drive me in next week.",
    "?{rel_first} says I should ask whether the dose is too high.",
    "Please call me at {phone} or email {email}.",
    "Thanks, {pt_first}",
    "---",
    "Reply from {nurse}: Hi {pt_first}, Dr. {doc_last} reviewed your message. We booked "
    "you for {date} at 10:30. {clin}",
]

REFERRAL = [
    "{hospital} - Department of Medicine",
    "{addr}",
    "Tel {phone} | Fax {phone} | {url}",
    "",
    "{date}",
    "",
    "Dear {doc2},",
    "Re: {pt_title}, DOB {dob}, {mrn_cue}",
    "Address: {addr}",
    "?Insurance: {member}",
    "",
    "Thank you for seeing this {pt_age} with {problem}. {clin3}",
    "{pronoun} was diagnosed in {year} and has been on {drug} since {year}. {clin}",
    "?{poss} {rel_relation_free} is {poss} main carer and is happy to be contacted on {phone}.",
    "?{clin3}",
    "I would be grateful for your opinion on further management.",
    "",
    "Yours sincerely,",
    "{doc}",
    "{licence}",
    "?{email_doc}",
]

PROGRESS = [
    "PROGRESS NOTE {date}",
    "S: {pt_first} reports less breathlessness since starting {drug}. {clin}",
    "?{rel} reports {pronoun_lower} is sleeping better.",
    "O: {clin3}",
    "{clin}",
    "A: {young_age} with {problem} and {problem}, improving.",
    "P: {clin} {clin}",
    "?Discussed with {doc2} who agrees. Recheck on {date_ny}.",
    "{doc}",
]

PHONE_CALL = [
    "Telephone encounter {date} 09:12",
    "Caller: {rel} regarding {pt}, {pt_age}, {mrn_cue}.",
    "Callback number {phone}.",
    "{rel_first} reports that {pt_first} has had poor oral intake for {days} days. {clin}",
    "?Advised to present to the ED in {city} if worse.",
    "Message routed to {doc}.",
    "{nurse}",
]

DEVICE = [
    "DEVICE CLINIC - REMOTE INTERROGATION",
    "Transmission received {date} from home monitor at {ip}.",
    "Patient: {pt}, DOB {dob}, {mrn_cue}.",
    "Device: dual-chamber pacemaker, {serial}, implanted {date} by {doc}.",
    "?Lead {serial}.",
    "Battery 9.5 years, RA pacing 12%, RV pacing 3%, no sustained arrhythmias. {clin}",
    "Report uploaded to {url}.",
    "?Questions to the device clinic at {phone}.",
    "{nurse}",
]

SOCIAL = [
    "SOCIAL WORK NOTE {date}",
    "{pt} ({pt_age}) lives alone at {addr}.",
    "SSN {ssn}. {member}. {account}.",
    "?Photo ID: {licence}.",
    "?Email for correspondence: {email}.",
    "{pronoun} has support from {rel} who visits on {date_ny}.",
    "{clin}",
    "Referred to meals on wheels; follow up by phone at {phone}.",
    "{nurse}",
]

RADIOLOGY = [
    "PATIENT: {pt_caps}   {mrn_cue}   DOB: {dob}",
    "EXAM: CT CHEST WITH CONTRAST   DATE OF SERVICE: {date}   {rx}",
    "ORDERING PHYSICIAN: {doc_caps}",
    "CLINICAL HISTORY: {young_age} with {problem}. Comparison: {date}.",
    "FINDINGS: {clin3}",
    "IMPRESSION: No acute cardiopulmonary process. {clin}",
    "Dictated by {doc} at 0815; transcribed {date}.",
]

MEDREC = [
    "MEDICATION RECONCILIATION - {hospital}",
    "Patient {pt_middle}, {pt_age}. Pharmacy phone {phone}.",
    "{druglist}",
    "{druglist}",
    "{rx}; refills 2.",
    "{clin}",
    "?Patient's {rel_relation_free} manages the pill organiser.",
    "Reconciled by {nurse} on {date}.",
]

NURSING = [
    "NURSING SHIFT NOTE {date} 19:00-07:00",
    "{pt_hyphen} slept most of the night. {clin}",
    "{pt_first} was reoriented twice; {pronoun_lower} recognised {poss} {rel_relation_free}.",
    "{clin3}",
    "?{rel_first} at bedside from 2100 until 2300 and asked about discharge to {city}.",
    "Bed alarm on, falls risk high. {clin}",
    "{nurse}",
]

CASUAL = [
    "hi its {pt_lower} again, {rel_lower} said to message u",
    "the new pills ({drug}) make me sick since {date_ny}. {clin}",
    "can u call {rel_lower} on {phone} or me at {phone}?",
    "thx {pt_lower}",
]

# Clinician-free teaching text: every word should survive de-identification.
TEACHING = [
    "Teaching case: {young_age} with {problem}.",
    "{clin3}",
    "{clin3}",
    "Management included {drug} and {drug}; {clin}",
    "Key learning: {problem} can mimic {problem}. Diagnosed in {year}, treated since {year}.",
]

# (kind, weight per 26 notes, template)
NOTE_KINDS: list[tuple[str, int, list[str]]] = [
    ("triage", 3, TRIAGE),
    ("discharge", 3, DISCHARGE),
    ("message", 3, MESSAGE),
    ("referral", 3, REFERRAL),
    ("progress", 3, PROGRESS),
    ("phone", 2, PHONE_CALL),
    ("device", 1, DEVICE),
    ("social", 1, SOCIAL),
    ("teaching", 1, TEACHING),
    ("radiology", 2, RADIOLOGY),
    ("medrec", 1, MEDREC),
    ("nursing", 2, NURSING),
    ("casual", 1, CASUAL),
]
